"""The input-scale policy: at what scale the network sees an image, in training and in
prediction alike, chosen once from a model's settings (`scale_policy`).

- `NativeScale` (``resize_policy native``): the image at its own scale, padded to the
  network's multiple; in prediction, with ``--scales`` or ``--diameter``, at each of a few
  factors, the most confident kept (`pipeline.core.scale.most_confident`).
- `ResizeScale` (``resize``, the seeds' way): every image resized to the crop size, and
  the probabilities back; it takes neither ``--scales`` nor ``--diameter``.
- `NucleusScale` (``nucleus``): training images rescaled so that their median nucleus is
  ``nucleus_diameter`` pixels across; in prediction the factor is estimated from the
  network's own instances (`pipeline.core.scale`), or, with ``--diameter``, given.

Every policy has `before` (a normalised image as the network takes it) and `after` (the
network's probabilities back to that image's size); `ScalePolicy.probabilities` runs a
network over images at the policy's scales and brings each result back to its image's own
size; `ScalePolicy.training_samples` prepares the training samples. This is the one module
that reads ``config.train.resize_policy``.

>>> config = Config()
>>> scale_policy(config)
NativeScale(factors=(1.0,))
>>> config.train.resize_policy = "resize"
>>> policy = scale_policy(config)
>>> policy, policy.before(np.zeros((50, 70, 3)), 16).shape
(ResizeScale(crop_size=128), (128, 128, 3))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from skimage.transform import resize

from pipeline.config import RESIZE_POLICIES, Config, scale_factors
from pipeline.core.nucleus_size import recorded_median_diameter
from pipeline.core.preprocess import crop_to_shape, pad_to_multiple
from pipeline.core.scale import (
    REFINE_PASSES,
    limit_factor,
    median_diameter,
    most_confident,
    next_factor,
    rescale_image,
    rescale_labelled,
    restore_size,
    scale_factor,
)
from pipeline.errors import PipelineError

__all__ = [
    "NativeScale",
    "Network",
    "NucleusScale",
    "ResizeScale",
    "ScalePolicy",
    "scale_policy",
    "settle_prediction_scale",
    "training_median_diameter",
]

log = logging.getLogger(__name__)

#: ``network(images, tta, on_image=None)``: the probabilities of each image at its own
#: size (``on_image`` ticks once an image); a prediction run's network, as the policy
#: calls it.
Network = Callable[..., list[np.ndarray]]


def _run(network: Network, images, tta: bool, on_image=None) -> list[np.ndarray]:
    """``network`` on ``images``, ``on_image`` passed only when there is one."""
    if on_image is None:
        return network(images, tta)
    return network(images, tta, on_image)


class ScalePolicy:
    """What every policy shares: the image padded to the network's multiple and cropped
    back, the training samples as they are, a prediction at the image's own scale."""

    name: ClassVar[str] = ""
    takes_scales: ClassVar[bool] = False  # predict --scales (test-time factors)
    takes_diameter: ClassVar[bool] = True  # predict --diameter (the user's nucleus size)
    #: The one side every input has (the crop size of a model that resizes), or None.
    fixed_side: int | None = None

    def training_samples(self, samples):
        """The training samples as this policy has the network see them."""
        return samples

    def before(self, image: np.ndarray, multiple: int) -> np.ndarray:
        """A normalised (H, W, C) image as the network takes it: padded to ``multiple``."""
        return pad_to_multiple(image, multiple)

    def after(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The network's (h, w, C) probabilities of `before`'s image back to ``shape``."""
        return crop_to_shape(prob, shape)

    def probabilities(
        self,
        images: Sequence[np.ndarray],
        network: Network,
        tta: bool,
        on_image: Callable[[], None] | None = None,
        instances: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Each image's probabilities at its own size, ``network`` run at this policy's
        scales; ``instances`` (probabilities to labels) for a policy that measures."""
        return _run(network, images, tta, on_image)


def _at_most_confident_factor(images, network: Network, tta, factors, on_image):
    """Probabilities of each image at the most confident of several scales.

    Every image is predicted at each factor (no image enlarged past
    `pipeline.core.scale.MAX_SCALED_PIXELS`), the probabilities are brought back to
    its own size, and `pipeline.core.scale.most_confident` picks one of them.
    ``on_image`` ticks as each image's last factor is done.
    """
    at_scale = []
    for number, factor in enumerate(factors, start=1):
        limited = [limit_factor(factor, image.shape) for image in images]
        scaled = [rescale_image(image, f) for image, f in zip(images, limited, strict=True)]
        last = number == len(factors)
        probs = _run(network, scaled, tta, on_image if last else None)
        at_scale.append(
            [restore_size(prob, image.shape[:2]) for prob, image in zip(probs, images, strict=True)]
        )
    chosen = []
    for i in range(len(images)):
        candidates = [probs[i] for probs in at_scale]
        chosen.append(candidates[most_confident(candidates, factors)])
    return chosen


@dataclass(frozen=True)
class NativeScale(ScalePolicy):
    """At the images' own scale; in prediction at each of ``factors`` (test-time scales,
    or the one of a user's diameter), the most confident kept."""

    factors: tuple[float, ...] = (1.0,)
    name: ClassVar[str] = "native"
    takes_scales: ClassVar[bool] = True

    def probabilities(self, images, network, tta, on_image=None, instances=None):
        if self.factors == (1.0,):
            return _run(network, images, tta, on_image)
        return _at_most_confident_factor(images, network, tta, self.factors, on_image)


@dataclass(frozen=True)
class ResizeScale(ScalePolicy):
    """Every image resized to ``crop_size`` x ``crop_size``, and the probabilities back."""

    crop_size: int
    name: ClassVar[str] = "resize"
    takes_diameter: ClassVar[bool] = False

    @property
    def fixed_side(self) -> int:  # type: ignore[override]
        return self.crop_size

    def training_samples(self, samples):
        """The seeds' way: every image and its labels resized to the crop size."""
        size = self.crop_size
        prepared = []
        for sample in samples:
            image = resize(
                sample.image, (size, size), order=1, preserve_range=True, anti_aliasing=True
            ).astype(np.uint8)
            labels = resize(
                sample.labels, (size, size), order=0, preserve_range=True, anti_aliasing=False
            ).astype(np.int32)
            prepared.append(dataclasses.replace(sample, image=image, labels=labels))
        return prepared

    def before(self, image: np.ndarray, multiple: int) -> np.ndarray:
        size = self.crop_size
        return resize(image, (size, size), order=1, preserve_range=True, anti_aliasing=True)

    def after(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        return resize(prob, shape, order=1, preserve_range=True)


@dataclass(frozen=True)
class NucleusScale(ScalePolicy):
    """Images rescaled so that their median nucleus is ``diameter`` pixels across: in
    training from the labels, in prediction estimated (`_estimated`), or at the one
    factor of ``factors`` (a user's diameter) when given."""

    diameter: float
    factors: tuple[float, ...] = ()
    name: ClassVar[str] = "nucleus"

    def training_samples(self, samples):
        if self.diameter <= 0:
            raise PipelineError(f"nucleus_diameter must be > 0, got {self.diameter}")
        prepared = []
        for sample in samples:
            image, labels = rescale_labelled(sample.image, sample.labels, self.diameter)
            prepared.append(dataclasses.replace(sample, image=image, labels=labels))
        return prepared

    def probabilities(self, images, network, tta, on_image=None, instances=None):
        if self.factors:
            return _at_most_confident_factor(images, network, tta, self.factors, on_image)
        if instances is None:
            raise ValueError("the nucleus policy measures instances: pass instances")
        probs = self._estimated(images, network, tta, instances)
        for _ in probs:
            if on_image is not None:
                on_image()
        return probs

    def _estimated(self, images, network: Network, tta: bool, instances) -> list[np.ndarray]:
        """Probabilities with each image rescaled so that its nuclei have ``diameter``.

        The median nucleus diameter is measured on the network's own instances: first at
        the image's own scale, then ``REFINE_PASSES`` times at the scale the last pass
        suggested (without TTA); the last scale is predicted (with TTA if asked, reusing
        the last pass when it is the same) and brought back to the image's own size.
        """
        factors = [1.0] * len(images)
        probs: list[np.ndarray] = []
        for _ in range(1 + REFINE_PASSES):
            measured = factors
            scaled = [rescale_image(image, f) for image, f in zip(images, measured, strict=True)]
            probs = network(scaled, False)
            factors = [
                limit_factor(
                    next_factor(f, median_diameter(instances(prob)), self.diameter), image.shape
                )
                for f, prob, image in zip(measured, probs, images, strict=True)
            ]
        redo = [i for i, (f, g) in enumerate(zip(factors, measured, strict=True)) if tta or f != g]
        if redo:
            again = network([rescale_image(images[i], factors[i]) for i in redo], tta)
            for i, prob in zip(redo, again, strict=True):
                probs[i] = prob
        shapes = [image.shape[:2] for image in images]
        return [restore_size(prob, shape) for prob, shape in zip(probs, shapes, strict=True)]


_POLICIES: dict[str, type[ScalePolicy]] = {
    "native": NativeScale,
    "resize": ResizeScale,
    "nucleus": NucleusScale,
}


def _policy_class(config: Config) -> type[ScalePolicy]:
    """The policy ``config.train.resize_policy`` names (the one place it is read)."""
    name = config.train.resize_policy
    if name not in _POLICIES:
        raise PipelineError(f"resize_policy must be one of {RESIZE_POLICIES}, got {name!r}")
    return _POLICIES[name]


def scale_policy(config: Config) -> ScalePolicy:
    """The input-scale policy of a model's settings, with its prediction's factors: a
    user's ``predict.diameter`` to ``train.nucleus_diameter`` (the one factor, where the
    policy takes a diameter), else ``predict.scales`` for the native policy.

    >>> config = Config()
    >>> config.predict.scales = "0.5,1"
    >>> scale_policy(config)
    NativeScale(factors=(0.5, 1.0))
    >>> config.train.resize_policy = "nucleus"
    >>> scale_policy(config)
    NucleusScale(diameter=20.0, factors=())
    >>> config.predict.diameter = 40.0
    >>> scale_policy(config)
    NucleusScale(diameter=20.0, factors=(0.5,))
    """
    kind = _policy_class(config)
    if kind is ResizeScale:
        return ResizeScale(config.train.crop_size)
    given: tuple[float, ...] = ()
    if config.predict.diameter > 0:
        given = (scale_factor(config.predict.diameter, config.train.nucleus_diameter),)
    if kind is NucleusScale:
        return NucleusScale(config.train.nucleus_diameter, given)
    return NativeScale(given or scale_factors(config.predict.scales))


def training_median_diameter(model_dir: Path, config: Config) -> tuple[float, str]:
    """``(diameter, where from)``: the median nucleus diameter the model in ``model_dir``
    was trained on: ``nucleus_diameter`` for a model of the nucleus policy, else the one
    it records (`pipeline.core.nucleus_size.recorded_median_diameter`)."""
    if _policy_class(config) is NucleusScale:
        return float(config.train.nucleus_diameter), "its nucleus_diameter"
    return recorded_median_diameter(model_dir)


def settle_prediction_scale(model_dir: Path, config: Config, asked_scales: str | None) -> None:
    """Refuse the ``--scales`` and ``--diameter`` a model's policy cannot take, and put the
    median nucleus diameter it was trained on (`training_median_diameter`) into
    ``config.train.nucleus_diameter``, the size ``config.predict.diameter`` rescales to."""
    kind = _policy_class(config)
    if asked_scales is not None and scale_factors(asked_scales) != (1.0,):
        if not kind.takes_scales:
            raise PipelineError(
                f"{model_dir}: --scales {asked_scales} needs a model trained at the images' "
                f"own scale (resize_policy native); this one's is {kind.name}, which sets "
                "the scale itself"
            )
    diameter = config.predict.diameter
    if not kind.takes_diameter:
        if diameter > 0:
            raise PipelineError(
                f"{model_dir}: --diameter needs a model that predicts at the images' own "
                "scale; this one resizes every image to its crop size (resize_policy resize)"
            )
        return
    trained, source = training_median_diameter(model_dir, config)
    config.train.nucleus_diameter = trained
    if diameter <= 0:
        return
    if asked_scales is not None and scale_factors(asked_scales) != (1.0,):
        raise PipelineError("--diameter sets the scale itself: leave out --scales")
    log.info(
        "nuclei of %g pixels across rescaled to the %.3g pixels the model was trained on (%s)",
        diameter, trained, source,
    )  # fmt: skip
