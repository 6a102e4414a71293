"""Burned-in text: find text drawn into the pixels (names, dates, ids) and black it out.

No OCR model: a measured image-processing method (``bench/burnedin_eval.py`` writes its
detection rate to ``bench/results/burnedin.json``). Burned-in annotations are drawn at
(or near) the brightest display value with sharp edges, as rows of small, similar-sized
strokes. So, on the 8-bit default rendition:

1. candidate pixels: at least :data:`BRIGHT` and clearly brighter than their
   neighbourhood (a 31-pixel box mean) — the inside of a large bright restoration is not
   brighter than its neighbourhood, so it drops out;
2. connected components of those pixels that are glyph-sized (height 5-120 px, not
   filled like a solid blob, not wider than a word);
3. glyphs grouped into lines: vertically overlapping, horizontally close (a gap under
   1.5x the glyph height); a line of at least three glyphs, or two covering twice their
   height in width, is text.

Each text line's box, padded, is masked with the darkest display value. What it misses:
text drawn in mid-grey on bright anatomy, text smaller than 5 px, single characters
(a lone "L"/"R" marker is left, which is also not identifying).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Box = tuple[int, int, int, int]
"""x, y, width, height in pixels."""

BRIGHT = 225
CONTRAST = 35
MIN_H, MAX_H = 5, 120


@dataclass(slots=True)
class _Glyph:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def h(self) -> int:
        return self.y1 - self.y0


def _glyphs(u8: Array) -> list[_Glyph]:
    from scipy import ndimage

    img = u8.astype(np.float32)
    local = ndimage.uniform_filter(img, size=31, mode="nearest")
    mask = (u8 >= BRIGHT) & (img - local >= CONTRAST)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    found: list[_Glyph] = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        h = sl[0].stop - sl[0].start
        w = sl[1].stop - sl[1].start
        area = int(areas[index])
        if not (MIN_H <= h <= MAX_H) or w > 8 * h or area < 6:
            continue
        if area > 0.9 * h * w and min(h, w) > 4:  # a solid blob, not a stroke
            continue
        found.append(_Glyph(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return found


def _lines(glyphs: list[_Glyph]) -> list[list[_Glyph]]:
    """Union-find of glyphs on one text line."""
    parent = list(range(len(glyphs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(glyphs)), key=lambda i: glyphs[i].x0)
    for pos, i in enumerate(order):
        a = glyphs[i]
        for j in order[pos + 1 :]:
            b = glyphs[j]
            size = max(a.h, b.h)
            if b.x0 - a.x1 > 1.5 * size:
                break
            overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
            if overlap >= 0.5 * min(a.h, b.h) and max(a.h, b.h) <= 3 * min(a.h, b.h):
                parent[root(j)] = root(i)
    groups: dict[int, list[_Glyph]] = {}
    for i, g in enumerate(glyphs):
        groups.setdefault(root(i), []).append(g)
    return list(groups.values())


def detect(u8: Array) -> list[Box]:
    """Boxes of text lines burned into an 8-bit rendition."""
    boxes: list[Box] = []
    height, width = u8.shape[:2]
    for line in _lines(_glyphs(u8)):
        x0 = min(g.x0 for g in line)
        x1 = max(g.x1 for g in line)
        y0 = min(g.y0 for g in line)
        y1 = max(g.y1 for g in line)
        h = y1 - y0
        if len(line) >= 3 or (len(line) == 2 and x1 - x0 >= 2 * h):
            pad = max(2, h // 3)
            bx, by = max(0, x0 - pad), max(0, y0 - pad)
            boxes.append((bx, by, min(width, x1 + pad) - bx, min(height, y1 + pad) - by))
    return boxes


def mask(array: Array, boxes: list[Box], value: float) -> Array:
    """``array`` with every box filled with ``value`` (a copy)."""
    out = array.copy()
    for x, y, w, h in boxes:
        out[y : y + h, x : x + w] = value
    return out
