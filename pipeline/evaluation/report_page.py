"""The HTML page of a submission's report: ``index.html``, one self-contained document.

`render_index_html` fills the Jinja2 template ``templates/report.html`` (beside this
module; autoescaped) with the overall score, the score per image kind, the galleries of
overlays (`pipeline.evaluation.overlays`) and the full per-image table
(`pipeline.evaluation.image_results.scores_table`). The report
(`pipeline.evaluation.report`) writes it.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Sequence

import jinja2
import numpy as np
import pandas as pd

from pipeline.data import dataset
from pipeline.evaluation.image_results import ImageResult, scores_table
from pipeline.evaluation.overlays import OVERLAYS_DIR, overlay_file_name

__all__ = ["PAGE_TEMPLATE", "render_index_html"]

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
