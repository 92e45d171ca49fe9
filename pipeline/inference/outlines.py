"""Nuclei as polygons, for the tools biologists open results in: Fiji and QuPath.

Each nucleus of an instance label image becomes the polygon that runs along its pixels'
edges (`nucleus_polygons`): the union of its pixels as squares (`shapely`), so that it
encloses exactly those pixels. Coordinates are ``(x, y)`` = ``(column, row)`` of pixel
corners, as Fiji and QuPath place them: pixel ``(row, col)`` spans ``[col, col + 1]`` by
``[row, row + 1]``, and both tools fill a polygon's pixels by their centres, so the
polygon gives back the nucleus pixel for pixel.

- A nucleus touching the image's border runs along it: its polygon has vertices on the
  edge (x = 0 or width, y = 0 or height), nothing is cut or padded.
- A nucleus whose pixels touch only by a corner somewhere (a ragged outline, pieces that
  meet at a corner): a pixel is added there (`bridge_corners`), so that its polygon is one
  piece whose outline never touches itself (valid, as `shapely` and QuPath want it); of a
  nucleus in pieces apart, the largest is kept (an ImageJ polygon and a QuPath detection
  are one piece each). Those are the only differences from the nucleus' pixels.
- A hole: kept as an interior ring in GeoJSON; an ImageJ polygon has no holes, so the ROI
  covers it (ImageJ's own traced ROIs do the same).

`imagej_roi_set` writes one ImageJ polygon ROI per nucleus into a ROI set (a ZIP, as
Fiji's ROI Manager saves and opens it, ROIs encoded by `roifile`); `qupath_feature_collection`
makes a GeoJSON FeatureCollection of QuPath detections (``"objectType": "detection"``,
classification ``Nucleus``, the measurements of `pipeline.inference.measure` as
``properties.measurements``). Both keep the label order: the k-th ROI or feature is
label k, the k-th CSV row of the image.

>>> labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 2]])
>>> [(label, list(polygon.exterior.coords)) for label, polygon in nucleus_polygons(labels)]
... # doctest: +NORMALIZE_WHITESPACE
[(1, [(2.0, 1.0), (1.0, 1.0), (1.0, 2.0), (0.0, 2.0), (0.0, 0.0), (2.0, 0.0), (2.0, 1.0)]),
 (2, [(3.0, 2.0), (3.0, 3.0), (2.0, 3.0), (2.0, 2.0), (3.0, 2.0)])]
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import numpy as np
import pandas as pd
import shapely
from roifile import ROI_TYPE, ImagejRoi
from scipy import ndimage
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

#: The QuPath classification of every detection, and its colour (RGB).
CLASSIFICATION = {"name": "Nucleus", "color": [255, 200, 0]}
#: The date written into every entry of a ROI set: the same labels give the same bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _pixel_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, starts, ends)`` of the horizontal runs of True in a 2-D mask (``ends``
    one past the last column).

    >>> [a.tolist() for a in _pixel_runs(np.array([[1, 1, 0, 1], [0, 1, 1, 0]], bool))]
    [[0, 0, 1], [0, 3, 1], [2, 4, 3]]
    """
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    steps = np.diff(padded, axis=1)
    start_rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return start_rows, starts, ends


def bridge_corners(mask: np.ndarray) -> np.ndarray:
    """``mask`` with a pixel added wherever two of its pixels touch only by a corner (a
    2x2 window holding just a diagonal pair), until none do: the pieces become one,
    without a vertex where the outline would touch itself.

    >>> bridge_corners(np.array([[1, 0, 0], [0, 1, 1]], bool)).astype(int).tolist()
    [[1, 1, 0], [0, 1, 1]]
    """
    mask = np.array(mask, dtype=bool)
    while True:
        top_left, top_right = mask[:-1, :-1], mask[:-1, 1:]
        bottom_left, bottom_right = mask[1:, :-1], mask[1:, 1:]
        main = top_left & bottom_right & ~top_right & ~bottom_left
        anti = top_right & bottom_left & ~top_left & ~bottom_right
        if not (main.any() or anti.any()):
            return mask
        rows, cols = np.nonzero(main)
        mask[rows, cols + 1] = True
        rows, cols = np.nonzero(anti)
        mask[rows, cols] = True


def mask_polygon(mask: np.ndarray, top: int = 0, left: int = 0) -> Polygon:
    """The polygon along the pixel edges of a 2-D mask, holes kept as interior rings; its
    corner ``(0, 0)`` is at ``(x, y) = (left, top)``. Pieces touching by a corner are
    joined (`bridge_corners`); of pieces apart, the largest is kept. The mask must hold a
    pixel."""
    rows, starts, ends = _pixel_runs(bridge_corners(mask))
    if rows.size == 0:
        raise ValueError("an empty mask has no polygon")
    boxes = shapely.box(starts + left, rows + top, ends + left, rows + top + 1)
    shape = shapely.simplify(shapely.union_all(boxes), 0)  # drops the runs' joints
    if shape.geom_type == "MultiPolygon":
        shape = max(shape.geoms, key=lambda piece: piece.area)  # first of equal ones
    return orient(shape, sign=1.0)


def nucleus_polygons(labels: np.ndarray) -> Iterator[tuple[int, Polygon]]:
    """``(label, polygon)`` for each nucleus of an instance label image, in label order
    (`mask_polygon` of its pixels)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    for index, box in enumerate(ndimage.find_objects(labels.astype(np.int32, copy=False))):
        if box is None:
            continue
        label = index + 1
        yield label, mask_polygon(labels[box] == label, box[0].start, box[1].start)


def imagej_roi(polygon: Polygon, name: str) -> ImagejRoi:
    """One ImageJ polygon ROI: the polygon's outline (its holes left out), named ``name``."""
    corners = np.asarray(polygon.exterior.coords, dtype=np.int32)[:-1]  # not closed
    roi = ImagejRoi.frompoints(corners, name=name)
    roi.roitype = ROI_TYPE.POLYGON
    # Polygon bounds are its extreme coordinates (frompoints' are one past, for points).
    roi.right, roi.bottom = roi.right - 1, roi.bottom - 1
    return roi


def imagej_roi_set(labels: np.ndarray) -> bytes:
    """An ImageJ ROI set (a ZIP of ``<label>.roi``): one polygon ROI per nucleus, named by
    its label, in label order; the same labels give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for label, polygon in nucleus_polygons(labels):
            entry = zipfile.ZipInfo(f"{label}.roi", date_time=ZIP_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, imagej_roi(polygon, str(label)).tobytes())
    return buffer.getvalue()


def _ring(coords) -> list[list[int]]:
    return [[int(x), int(y)] for x, y in coords]


def qupath_feature_collection(labels: np.ndarray, measurements: pd.DataFrame) -> dict:
    """A GeoJSON FeatureCollection as QuPath imports it: one Polygon feature per nucleus, in
    label order, a detection classified ``Nucleus``, named by its label, with its row of
    ``measurements`` (`pipeline.inference.measure.measure_nuclei`) as its measurements."""
    rows = {int(row["label"]): row for row in measurements.to_dict(orient="records")}
    features = []
    for label, polygon in nucleus_polygons(labels):
        values = {k: v for k, v in rows.get(label, {}).items() if k != "label"}
        rings = [_ring(polygon.exterior.coords), *(_ring(r.coords) for r in polygon.interiors)]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "detection",
                    "name": str(label),
                    "classification": CLASSIFICATION,
                    "measurements": {k: float(v) for k, v in values.items()},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def geojson_text(labels: np.ndarray, measurements: pd.DataFrame) -> str:
    """`qupath_feature_collection` as the text of a ``.geojson`` file."""
    return json.dumps(qupath_feature_collection(labels, measurements)) + "\n"
