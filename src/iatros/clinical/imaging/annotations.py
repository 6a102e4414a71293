"""What makes an annotation valid: its shape's points inside the image, an FDI tooth, a
known finding type. Checked in the service so the HTTP API and the CLI refuse alike, each
refusal naming the field (``points``, ``tooth``, ``finding``)."""

from __future__ import annotations

import math
from typing import Any

from iatros.clinical.imaging.findings import FINDING_TYPES, AiFinding, valid_tooth
from iatros.errors import InvalidRequest

SHAPES = ("box", "polygon", "point")
STATUSES = ("accepted", "proposed", "rejected")
POINTS = {"box": (2, 2), "point": (1, 1), "polygon": (3, 500)}


def check_points(shape: str, points: list[list[float]], width: int, height: int
                 ) -> list[list[float]]:  # fmt: skip
    if shape not in SHAPES:
        raise InvalidRequest(
            f"Unknown shape {shape!r} (shapes: {', '.join(SHAPES)}).", param="shape",
            code="invalid_shape",
        )  # fmt: skip
    low, high = POINTS[shape]
    if not low <= len(points) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise InvalidRequest(
            f"A {shape} has {want} points, not {len(points)}.", param="points",
            code="invalid_points",
        )  # fmt: skip
    out: list[list[float]] = []
    for i, point in enumerate(points):
        if len(point) != 2 or not all(math.isfinite(v) for v in point):
            raise InvalidRequest(
                f"points[{i}] must be [x, y] with finite numbers.", param=f"points.{i}",
                code="invalid_points",
            )  # fmt: skip
        x, y = float(point[0]), float(point[1])
        if not (0 <= x <= width and 0 <= y <= height):
            raise InvalidRequest(
                f"points[{i}] = [{x:g}, {y:g}] is outside the {width}x{height} image.",
                param=f"points.{i}", code="point_outside_image",
            )  # fmt: skip
        out.append([round(x, 2), round(y, 2)])
    if shape == "box" and (out[0][0] == out[1][0] or out[0][1] == out[1][1]):
        raise InvalidRequest(
            "A box needs two opposite corners (its width and height are not zero).",
            param="points", code="invalid_points",
        )  # fmt: skip
    return out


def check_tooth(tooth: int | None) -> int | None:
    if tooth is not None and not valid_tooth(tooth):
        raise InvalidRequest(
            f"{tooth} is not an FDI tooth number (11-18, 21-28, 31-38, 41-48; primary "
            "51-55, 61-65, 71-75, 81-85).", param="tooth", code="invalid_tooth",
        )  # fmt: skip
    return tooth


def check_finding(finding: str) -> str:
    if finding not in FINDING_TYPES:
        raise InvalidRequest(
            f"Unknown finding {finding!r} (findings: {', '.join(FINDING_TYPES)}).",
            param="finding", code="invalid_finding",
        )  # fmt: skip
    return finding


def from_ai(item: AiFinding, width: int, height: int) -> dict[str, Any]:
    """An AI finding as annotation content: its box, or the whole image when it gave none."""
    if item.box is not None:
        x, y, w, h = item.box
        points = [[max(0.0, x), max(0.0, y)], [min(width, x + w), min(height, y + h)]]
    else:
        points = [[0.0, 0.0], [float(width), float(height)]]
    tooth = item.tooth if item.tooth is not None and valid_tooth(item.tooth) else None
    return {
        "shape": "box",
        "points": [[round(v, 2) for v in p] for p in points],
        "finding": item.finding if item.finding in FINDING_TYPES else "other",
        "tooth": tooth,
        "note": None,
        "confidence": round(min(1.0, max(0.0, item.confidence)), 3),
        "explanation": item.explanation[:1000],
        "located": item.box is not None,
    }
