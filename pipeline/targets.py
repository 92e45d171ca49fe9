"""Instance labels to training targets: the per-pixel channels the network learns.

``labels_to_targets`` (here) and ``pipeline.postprocess.probabilities_to_labels`` are a
matched pair: one turns instances into the network's targets, the other turns the
network's output back into instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import PipelineError

TARGET_CHANNELS = ("foreground",)


def labels_to_targets(labels: np.ndarray, channels: Sequence[str] = TARGET_CHANNELS) -> np.ndarray:
    """Float32 (H, W, C) targets, one channel per name in ``channels``.

    - ``foreground``: 1 inside any nucleus, 0 elsewhere.

    >>> labels_to_targets(np.array([[0, 2], [1, 0]]))[..., 0].tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    planes = []
    for channel in channels:
        if channel == "foreground":
            planes.append(labels > 0)
        else:
            raise PipelineError(f"unknown target channel {channel!r}; known: {TARGET_CHANNELS}")
    return np.stack(planes, axis=-1).astype(np.float32)
