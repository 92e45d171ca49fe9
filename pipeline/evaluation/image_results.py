"""The per-image results of a submission's report, and their table.

`ImageResult` is what the report (`pipeline.evaluation.report`) knows of one image;
`scores_table` gives the rows of its ``per_image_scores.csv``, which the page
(`pipeline.evaluation.report_page`) shows too.

Examples
--------
>>> results = [ImageResult("a", "histology", 3, 0.5, 2, 1, 2, 1), ImageResult("b", "histology", 1)]
>>> print(scores_table(results).to_csv(index=False), end="")
ImageId,kind,score,n_true,n_pred,tp_iou50,fp_iou50,fn_iou50
a,histology,0.5,2,3,1,2,1
b,histology,,,1,,,
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

__all__ = ["SCORE_COLUMNS", "ImageResult", "scores_table"]

SCORE_COLUMNS = ("ImageId", "kind", "score", "n_true", "n_pred", "tp_iou50", "fp_iou50", "fn_iou50")


@dataclass(frozen=True)
class ImageResult:
    """What the report shows of one image.

    Attributes
    ----------
    image_id : str
        The Kaggle ImageId.
    kind : str
        One of `pipeline.data.dataset.KINDS`.
    n_pred : int
        Number of predicted nuclei.
    score : float or None
        The competition metric on this image; None without ground truth.
    n_true : int or None
        Number of true nuclei; None without ground truth.
    tp, fp, fn : int or None
        Matched pairs, unmatched predictions and unmatched true nuclei at IoU > 0.5; None
        without ground truth.
    """

    image_id: str
    kind: str
    n_pred: int
    score: float | None = None
    n_true: int | None = None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None


def scores_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """The rows of ``per_image_scores.csv``, in the order given (empty cells: no truth)."""
    table = pd.DataFrame(
        {
            "ImageId": pd.Series([r.image_id for r in results], dtype=str),
            "kind": pd.Series([r.kind for r in results], dtype=str),
            "score": pd.Series([r.score for r in results], dtype="Float64"),
            "n_true": pd.Series([r.n_true for r in results], dtype="Int64"),
            "n_pred": pd.Series([r.n_pred for r in results], dtype="Int64"),
            "tp_iou50": pd.Series([r.tp for r in results], dtype="Int64"),
            "fp_iou50": pd.Series([r.fp for r in results], dtype="Int64"),
            "fn_iou50": pd.Series([r.fn for r in results], dtype="Int64"),
        }
    )
    assert tuple(table.columns) == SCORE_COLUMNS
    return table
