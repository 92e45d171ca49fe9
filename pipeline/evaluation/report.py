"""A browsable report of a submission: overlay pictures and an HTML page (stage ``report``).

``./run.sh report SUBMISSION.csv`` writes, by default into ``submissions/<csv stem>/``
(beside the CSV, a folder named after it):

- ``per_image_scores.csv``: one row per image, worst first: ``ImageId``, ``kind``
  (`pipeline.data.dataset.image_kind`), ``score`` (the competition metric), ``n_true``, ``n_pred``
  and ``tp_iou50``, ``fp_iou50``, ``fn_iou50``, the matches at the lowest threshold
  (IoU > 0.5);
- ``overlays/<ImageId>.png`` for the N best and the N worst images: the image, and beside it
  the predicted nuclei filled in distinct colours with the true nuclei outlined in yellow;
- ``index.html``: one self-contained page (no external asset) with the overall score, the
  score per image kind, the two galleries and the full table.

The images are those of ``--images`` (Kaggle layout). Scores need the ground truth
(``--solution``, ``ImageId,EncodedPixels,Height,Width[,Usage]``): when it is absent or does
not cover every image, the report shows the predictions only (no score, no true outline; the
overlays are those of the first N images by id). The submission is matched with the images
and the solution as `pipeline.evaluation.score` and ``check-submission`` match it
(`pipeline.data.reconcile`), and its problems read the same: images whose solution rows are
all ``Ignored`` are left out, an image without submission rows is an empty prediction and an
unknown ImageId is ignored (these two with a warning), and a submission that cannot be read
or decoded is refused. The scores are the competition metric's (`pipeline.evaluation.metric`).

The folder is built in a temporary folder and then replaces ``--out`` in one step, so an
interrupted run leaves the previous report (or none), never half of one.

Example
-------
>>> report = build_report("submissions/unet.csv", "input/stage1_test", None)   # doctest: +SKIP
>>> report.index_html, report.score                                      # doctest: +SKIP
(PosixPath('submissions/unet/index.html'), 0.412...)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries
from tqdm import tqdm

from pipeline import paths
from pipeline.data import dataset
from pipeline.data.reconcile import Reconciled, images_in_folder, read_labels, reconcile
from pipeline.data.submission import read_submission_metadata
from pipeline.errors import PipelineError
from pipeline.evaluation.metric import score_image
from pipeline.fileio import atomic_dir, atomic_path, atomic_write_text

__all__ = [
    "PREDICTION_COLOURS",
    "SCORES_CSV",
    "TRUE_OUTLINE_COLOUR",
    "ImageResult",
    "Report",
    "build_report",
    "default_out_dir",
    "evaluate_images",
    "overlay_file_name",
    "overlay_rgb",
    "render_index_html",
    "scores_table",
    "select_galleries",
    "write_overlay_png",
]

log = logging.getLogger(__name__)

SCORES_CSV = "per_image_scores.csv"
INDEX_HTML = "index.html"
OVERLAYS_DIR = "overlays"
SCORE_COLUMNS = ("ImageId", "kind", "score", "n_true", "n_pred", "tp_iou50", "fp_iou50", "fn_iou50")

#: Outline colour of the true nuclei (RGB in 0..1): yellow, kept out of the fill colours.
TRUE_OUTLINE_COLOUR = (1.0, 1.0, 0.0)
#: Fill colours of the predicted nuclei: matplotlib's tab20 without its greys, olives,
#: purples and pinks (greys vanish on grey images, olives look like the yellow outlines,
#: purples and pinks like stained nuclei).
PREDICTION_COLOURS = np.array(
    [
        [0x1F, 0x77, 0xB4], [0xAE, 0xC7, 0xE8], [0xFF, 0x7F, 0x0E], [0xFF, 0xBB, 0x78],
        [0x2C, 0xA0, 0x2C], [0x98, 0xDF, 0x8A], [0xD6, 0x27, 0x28], [0xFF, 0x98, 0x96],
        [0x8C, 0x56, 0x4B], [0xC4, 0x9C, 0x94], [0x17, 0xBE, 0xCF], [0x9E, 0xDA, 0xE5],
    ],
    dtype=np.float64,
) / 255.0  # fmt: skip
#: Consecutive labels (often neighbours) take colours this far apart in the palette;
#: coprime with its length, so every colour is used.
_COLOUR_STEP = 5
#: Opacity of the prediction fill.
FILL_ALPHA = 0.55
#: The pixels just outside a true outline are darkened by this fraction.
OUTLINE_RIM_DARKENING = 0.6
#: Longest side of each picture in an overlay PNG, in pixels (keeps a PNG well under 500 KB).
PANEL_PIXELS = 400
_DPI = 100


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


@dataclass(frozen=True)
class Report:
    """A written report.

    Attributes
    ----------
    folder : Path
        The report folder.
    index_html : Path
        Its page.
    results : list of ImageResult
        Every image, worst first (by id without ground truth), as in the CSV.
    score : float or None
        Mean of the images' scores (the competition score); None without ground truth.
    worst, best : list of ImageResult
        The images of the two galleries (without ground truth: ``worst`` holds the first N
        images by id and ``best`` is empty).
    """

    folder: Path
    index_html: Path
    results: list[ImageResult]
    score: float | None
    worst: list[ImageResult]
    best: list[ImageResult]


# ----------------------------------------------------------------------------- inputs


def _read_inputs(submission_csv: Path, images_dir: Path, solution_csv: Path | None) -> Reconciled:
    """The submission reconciled with the images and the solution (`pipeline.data.reconcile`):
    refused when unreadable; unknown images are ignored and missing ones shown as empty
    predictions, with warnings."""
    images = images_in_folder(images_dir)
    labels = None if solution_csv is None else read_labels(solution_csv)
    reconciled = reconcile(submission_csv, images, labels)
    reconciled.refuse_unreadable()
    reconciled.warn_incomplete("they show as empty predictions")
    return reconciled


def _labels(
    reconciled: Reconciled, image_id: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted and true labels of one image (true ones None without ground truth)."""
    true_labels = reconciled.true_labels(image_id, shape)
    return reconciled.predicted_labels(image_id, shape), true_labels


# ---------------------------------------------------------------------------- scoring


def _evaluate(reconciled: Reconciled, images_dir: Path) -> list[ImageResult]:
    results = []
    for image_id in tqdm(
        reconciled.images.sources, desc="scoring", unit="image", disable=None, leave=False
    ):
        image = dataset.read_image(dataset.image_path(images_dir, image_id))
        kind = dataset.image_kind(image)
        pred_labels, true_labels = _labels(reconciled, image_id, image.shape[:2])
        if true_labels is None:
            results.append(ImageResult(image_id, kind, n_pred=int(pred_labels.max(initial=0))))
            continue
        scored = score_image(true_labels, pred_labels)
        results.append(
            ImageResult(
                image_id,
                kind,
                n_pred=scored.n_pred,
                score=scored.score,
                n_true=scored.n_true,
                tp=int(scored.tp[0]),
                fp=int(scored.fp[0]),
                fn=int(scored.fn[0]),
            )
        )
    if reconciled.labels is not None:
        results.sort(key=lambda result: (result.score, result.image_id))
    return results


def evaluate_images(
    submission_csv: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    solution_csv: str | os.PathLike[str] | None = None,
) -> list[ImageResult]:
    """Each image's kind, nucleus counts and (with ground truth) score.

    Parameters
    ----------
    submission_csv : str or Path
        ``ImageId,EncodedPixels``, one row per nucleus.
    images_dir : str or Path, optional
        The images, in Kaggle layout; by default ``input/stage1_test`` (`pipeline.paths`).
    solution_csv : str or Path, optional
        The ground truth; without it (or when it lacks some of the images) no score.

    Returns
    -------
    list of ImageResult
        Worst first (ties by id); by id without ground truth.

    Raises
    ------
    PipelineError
        When a file or the folder is missing or unreadable, or an encoding is invalid.
    """
    images_dir = Path(paths.TEST_DIR if images_dir is None else images_dir)
    reconciled = _read_inputs(
        Path(submission_csv), images_dir, None if solution_csv is None else Path(solution_csv)
    )
    return _evaluate(reconciled, images_dir)


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


def select_galleries(
    results: Sequence[ImageResult], n: int
) -> tuple[list[ImageResult], list[ImageResult]]:
    """The ``n`` worst and the ``n`` best images, never the same image twice.

    Parameters
    ----------
    results : sequence of ImageResult
        Worst first, as `evaluate_images` returns them (by id without scores).
    n : int
        Images per gallery (0 or more).

    Returns
    -------
    worst : list of ImageResult
        The first ``n`` images (worst first); without scores, simply the first ``n``.
    best : list of ImageResult
        Best first, from the images not in ``worst``: with fewer than ``2 n`` images it
        holds fewer than ``n`` (none without scores).

    Examples
    --------
    >>> ranked = [ImageResult(name, "histology", 0, score) for name, score in
    ...           [("a", 0.0), ("b", 0.5), ("c", 1.0)]]
    >>> [[r.image_id for r in gallery] for gallery in select_galleries(ranked, 2)]
    [['a', 'b'], ['c']]
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    worst = list(results[:n])
    scored = bool(results) and results[0].score is not None
    best = list(results[n:][::-1][:n]) if scored else []
    return worst, best


# --------------------------------------------------------------------------- overlays


def overlay_file_name(image_id: str) -> str:
    """The overlay PNG's file name: the id itself when it is a safe file name.

    Other characters become ``_`` and a short hash of the id keeps names apart.

    Examples
    --------
    >>> overlay_file_name("0a7d30b2")
    '0a7d30b2.png'
    >>> overlay_file_name("a/b")
    'a_b-3ec69c85.png'
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", image_id).lstrip(".") or "image"
    if safe == image_id:
        return f"{image_id}.png"
    digest = hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:100]}-{digest}.png"


def _thick_boundaries(labels: np.ndarray, thickness: int) -> np.ndarray:
    boundaries = find_boundaries(labels, mode="inner")
    if thickness > 1:
        boundaries = ndimage.binary_dilation(boundaries, iterations=thickness - 1) & (labels > 0)
    return boundaries


def overlay_rgb(
    image: np.ndarray,
    pred_labels: np.ndarray,
    true_labels: np.ndarray | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """The image with predicted nuclei filled and true nuclei outlined.

    Parameters
    ----------
    image : np.ndarray
        RGB uint8 (H, W, 3).
    pred_labels : np.ndarray
        (H, W) predicted instance labels; each nucleus is filled (``FILL_ALPHA`` opaque) in a
        colour of ``PREDICTION_COLOURS``, with its border more opaque, so that touching
        nuclei stay apart.
    true_labels : np.ndarray, optional
        (H, W) true instance labels, outlined in ``TRUE_OUTLINE_COLOUR`` on top, with a
        one-pixel darker rim just outside the outline (on the background).
    thickness : int
        Outline width in pixels (wider for images that are shown shrunk).

    Returns
    -------
    np.ndarray
        float64 RGB in [0, 1], (H, W, 3).

    Examples
    --------
    >>> picture = overlay_rgb(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3), int),
    ...                       np.pad([[1]], 1))
    >>> picture[1, 1].tolist(), picture[0, 0].tolist()
    ([1.0, 1.0, 0.0], [0.0, 0.0, 0.0])
    """
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    pred_labels = np.asarray(pred_labels)
    inside = pred_labels > 0
    colours = PREDICTION_COLOURS[(pred_labels * _COLOUR_STEP) % len(PREDICTION_COLOURS)]
    alpha = np.where(inside, FILL_ALPHA, 0.0)
    alpha[_thick_boundaries(pred_labels, thickness)] = 0.85
    rgb = rgb * (1.0 - alpha[..., None]) + colours * alpha[..., None]
    if true_labels is not None:
        outline = _thick_boundaries(np.asarray(true_labels), thickness)
        # A dark rim outside the outline keeps it visible on light backgrounds too.
        rim = ndimage.binary_dilation(outline) & ~outline & (np.asarray(true_labels) == 0)
        rgb[rim] *= 1.0 - OUTLINE_RIM_DARKENING
        rgb[outline] = TRUE_OUTLINE_COLOUR
    return rgb


def _short_id(image_id: str, keep: int = 12) -> str:
    return image_id if len(image_id) <= keep + 4 else image_id[:keep] + "\u2026"


def _nucleus_count(labels: np.ndarray) -> int:
    """The number of distinct non-zero labels."""
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def _overlay_legend(pred_labels: np.ndarray, true_labels: np.ndarray | None) -> str:
    """The line under an overlay figure: what the fill and the outlines are, and how many."""
    legend = f"coloured fill: {_nucleus_count(pred_labels)} predicted nuclei"
    if true_labels is not None:
        legend += f"    yellow outline: {_nucleus_count(true_labels)} true nuclei"
    return legend


def _overlay_figure(
    image: np.ndarray, pred_labels: np.ndarray, true_labels: np.ndarray | None, title: str
) -> Figure:
    """The image and `overlay_rgb` of it side by side, a title above and a legend below."""
    height, width = image.shape[:2]
    scale = PANEL_PIXELS / max(height, width)
    thickness = max(1, math.ceil(1.5 / scale))  # at least about 1.5 pixels once shown
    panel_w, panel_h = width * scale / _DPI, height * scale / _DPI
    margin, top, bottom = 0.1, 0.45, 0.35  # inches
    fig_w, fig_h = 2 * panel_w + 3 * margin, panel_h + top + bottom
    figure = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    pictures = (image, overlay_rgb(image, pred_labels, true_labels, thickness))
    for index, picture in enumerate(pictures):
        axes = figure.add_axes(
            (
                (margin + index * (panel_w + margin)) / fig_w,
                bottom / fig_h,
                panel_w / fig_w,
                panel_h / fig_h,
            )
        )
        axes.imshow(picture, interpolation="antialiased")
        axes.set_axis_off()
    figure.suptitle(title, y=1 - 0.08 / fig_h, va="top", fontsize=10)
    legend = _overlay_legend(pred_labels, true_labels)
    figure.text(0.5, 0.08 / fig_h, legend, ha="center", va="bottom", fontsize=8)
    return figure


def _save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Render a figure and save it, atomically, as a PNG of 256 colours."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rendered = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    # 256 colours (no dithering) keep the file small: about 1 byte a pixel at most.
    indexed = rendered.quantize(colors=256, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        indexed.save(tmp, format="PNG", optimize=True)


def write_overlay_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    pred_labels: np.ndarray,
    true_labels: np.ndarray | None,
    title: str,
) -> Path:
    """Write the overlay figure of one image as a PNG, atomically.

    Two pictures side by side, each at most ``PANEL_PIXELS`` on its longest side: the
    image, and `overlay_rgb` of it. A title above, a legend below.

    Parameters
    ----------
    path : str or Path
        The PNG to write.
    image : np.ndarray
        RGB uint8 (H, W, 3).
    pred_labels, true_labels : np.ndarray
        (H, W) instance labels; ``true_labels`` may be None (no outlines).
    title : str
        The figure's title.

    Returns
    -------
    Path
        ``path``.
    """
    _save_png(_overlay_figure(image, pred_labels, true_labels, title), path)
    return Path(path)


def _overlay_title(result: ImageResult) -> str:
    score = "no score" if result.score is None else f"score {result.score:.3f}"
    return f"{_short_id(result.image_id)}  |  {result.kind}  |  {score}"


def _write_overlays(
    reconciled: Reconciled, images_dir: Path, shown: Sequence[ImageResult], folder: Path
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for result in tqdm(shown, desc="overlays", unit="image", disable=None, leave=False):
        image = dataset.read_image(dataset.image_path(images_dir, result.image_id))
        pred_labels, true_labels = _labels(reconciled, result.image_id, image.shape[:2])
        write_overlay_png(
            folder / overlay_file_name(result.image_id),
            image,
            pred_labels,
            true_labels,
            _overlay_title(result),
        )


# ------------------------------------------------------------------------------- page

#: The page's template, in ``templates/`` beside this module.
PAGE_TEMPLATE = "report.html"
#: Headers of the page's per-image table, by column of `scores_table`.
_IMAGE_HEADERS = {
    "ImageId": "ImageId",
    "kind": "kind",
    "score": "score",
    "n_true": "true",
    "n_pred": "predicted",
    "tp_iou50": "TP",
    "fp_iou50": "FP",
    "fn_iou50": "FN",
}


@functools.cache
def _page_templates() -> jinja2.Environment:
    """The templates of the page: autoescaped, block tags leave no blank line."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _fixed(value: float | None, digits: int = 4) -> str:
    """A score as the page shows it: ``digits`` decimals, empty when there is none."""
    return "" if value is None else f"{value:.{digits}f}"


def _as_text(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell as the page shows it: floats by `_fixed`, missing values empty."""

    def column_text(values: pd.Series) -> pd.Series:
        if pd.api.types.is_float_dtype(values):
            values = values.map(_fixed, na_action="ignore")
        return values.astype("string").fillna("")

    return table.apply(column_text)


def _overlay_href(image_id: str) -> str:
    """The page's relative link to the overlay of an image."""
    return f"{OVERLAYS_DIR}/{urllib.parse.quote(overlay_file_name(image_id))}"


def _kind_table(results: Sequence[ImageResult], scored: bool) -> dict:
    """Images (and, when ``scored``, mean score) per kind: the known kinds first, even empty."""
    table = scores_table(results)
    kinds = list(dataset.KINDS) + sorted(set(table["kind"]) - set(dataset.KINDS))
    by_kind = table.groupby("kind")
    summary = pd.DataFrame({"images": by_kind.size(), "mean score": by_kind["score"].mean()})
    summary = summary.reindex(pd.Index(kinds, name="kind"))
    summary["images"] = summary["images"].fillna(0).astype("Int64")
    if not scored:
        summary = summary.drop(columns="mean score")
    text = _as_text(summary.reset_index())
    rows = [{"kind": row[0], "numbers": list(row[1:])} for row in text.itertuples(index=False)]
    return {"headers": list(text.columns), "rows": rows}


def _image_table(results: Sequence[ImageResult], linked: set[str]) -> dict:
    """Every image in the order given; the ids in ``linked`` link to their overlay."""
    text = _as_text(scores_table(results))
    numbers = text.drop(columns=["ImageId", "kind"])
    rows = [
        {
            "image_id": image_id,
            "href": _overlay_href(image_id) if image_id in linked else None,
            "kind": kind,
            "numbers": list(cells),
        }
        for image_id, kind, cells in zip(
            text["ImageId"], text["kind"], numbers.itertuples(index=False), strict=True
        )
    ]
    return {"headers": [_IMAGE_HEADERS[column] for column in text.columns], "rows": rows}


def _galleries(
    worst: Sequence[ImageResult], best: Sequence[ImageResult], scored: bool
) -> list[dict]:
    """The titled galleries of the page, each a list of figures."""
    if not scored:
        shown = [(f"The first {len(worst)} images", worst)]
    elif best:
        shown = [(f"Worst {len(worst)} images", worst), (f"Best {len(best)} images", best)]
    else:
        shown = [("All images, worst first", worst)]
    return [
        {
            "title": title,
            "figures": [
                {
                    "image_id": r.image_id,
                    "kind": r.kind,
                    "score": _fixed(r.score),
                    "href": _overlay_href(r.image_id),
                }
                for r in gallery
            ],
        }
        for title, gallery in shown
    ]


def render_index_html(
    name: str,
    results: Sequence[ImageResult],
    worst: Sequence[ImageResult],
    best: Sequence[ImageResult],
    details: Sequence[tuple[str, str]] = (),
) -> str:
    """The report's page: a self-contained HTML document (template ``templates/report.html``).

    Parameters
    ----------
    name : str
        The submission's name (the page's title).
    results : sequence of ImageResult
        Every image, in the order of the full table (worst first).
    worst, best : sequence of ImageResult
        The galleries (`select_galleries`); their overlays are ``overlays/<file>`` with file
        names from `overlay_file_name`.
    details : sequence of (str, str)
        Further facts shown under the title (the files, the model, ...).

    Returns
    -------
    str
        The HTML; every id and text is escaped, the only links are relative ones to the
        overlays.

    Examples
    --------
    >>> page = render_index_html("a<b", [ImageResult("x&y", "histology", 2, 0.5)], [], [])
    >>> "<h1>a&lt;b</h1>" in page, '<td class="id">x&amp;y</td>' in page
    (True, True)
    """
    scored = [r.score for r in results if r.score is not None]
    overall = float(np.mean(scored)) if scored else None
    return (
        _page_templates()
        .get_template(PAGE_TEMPLATE)
        .render(
            name=name,
            overall=None if overall is None else _fixed(overall),
            n_scored=len(scored),
            details=list(details),
            kinds=_kind_table(results, overall is not None),
            galleries=_galleries(worst, best, overall is not None),
            images=_image_table(results, {r.image_id for r in [*worst, *best]}),
        )
    )


# ------------------------------------------------------------------------------ stage


def default_out_dir(submission_csv: str | os.PathLike[str]) -> Path:
    """The report folder of a submission: beside it, named after it (``a/x.csv`` -> ``a/x``)."""
    path = Path(submission_csv)
    return path.with_name(path.stem if path.suffix else path.name + ".report")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier report (or an empty folder)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise PipelineError(f"{out_dir}: exists and is not a folder; choose another --out")
    entries = {entry.name for entry in out_dir.iterdir()}
    if entries and not {INDEX_HTML, SCORES_CSV} <= entries:
        raise PipelineError(
            f"{out_dir}: a folder that is not a report (no {INDEX_HTML} and {SCORES_CSV}); "
            "it would be replaced, so choose another --out"
        )


def _details(
    submission_csv: Path, images_dir: Path, solution_csv: Path | None
) -> list[tuple[str, str]]:
    details = [("submission", str(submission_csv)), ("images", str(images_dir))]
    details.append(("solution", str(solution_csv) if solution_csv else "none"))
    try:
        metadata = read_submission_metadata(submission_csv)
    except PipelineError as error:
        log.warning("%s", error)
        metadata = {}
    details += [
        (key, str(metadata[key])) for key in ("model", "config", "commit") if key in metadata
    ]
    return details


def build_report(
    submission_csv: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    solution_csv: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str] | None = None,
    n: int = 8,
) -> Report:
    """Score a submission image by image and write its report folder (atomically).

    Parameters
    ----------
    submission_csv : str or Path
        ``ImageId,EncodedPixels``, one row per nucleus.
    images_dir : str or Path
        The images, in Kaggle layout.
    solution_csv : str or Path or None
        The ground truth (``ImageId,EncodedPixels,Height,Width[,Usage]``). None, or a
        solution that lacks some of the images: predictions only.
    out_dir : str or Path, optional
        The report folder; by default `default_out_dir` of the submission. An existing
        report there is replaced; any other non-empty folder is refused.
    n : int
        Overlays of the ``n`` worst and the ``n`` best images (the first ``n`` without
        ground truth).

    Returns
    -------
    Report
        Where it is, and what it shows.

    Raises
    ------
    PipelineError
        When the submission or the solution is missing or unreadable, the images folder is
        missing or empty, an encoding is invalid, ``n`` is negative, or ``out_dir`` holds
        something else than a report.
    """
    submission_csv, images_dir = Path(submission_csv), Path(images_dir)
    solution = None if solution_csv is None else Path(solution_csv)
    out = default_out_dir(submission_csv) if out_dir is None else Path(out_dir)
    if n < 0:
        raise PipelineError(f"--n must be 0 or more, got {n}")
    _check_out_dir(out)
    reconciled = _read_inputs(submission_csv, images_dir, solution)
    results = _evaluate(reconciled, images_dir)
    worst, best = select_galleries(results, n)
    scored = [r.score for r in results if r.score is not None]
    overall = float(np.mean(scored)) if scored else None
    page = render_index_html(
        submission_csv.stem,
        results,
        worst,
        best,
        _details(submission_csv, images_dir, None if reconciled.labels is None else solution),
    )
    with atomic_dir(out) as tmp:
        _write_overlays(reconciled, images_dir, [*worst, *best], tmp / OVERLAYS_DIR)
        atomic_write_text(tmp / SCORES_CSV, scores_table(results).to_csv(index=False))
        atomic_write_text(tmp / INDEX_HTML, page)
    return Report(out, out / INDEX_HTML, results, overall, worst, best)
