"""Burned-in text: find text drawn into the pixels (names, dates, ids) and black it out.

No OCR model: a measured image-processing method (``bench/burnedin_eval.py`` writes its
detection rate to ``bench/results/burnedin.{json,md}``). Burned-in annotations are drawn
bright, with sharp edges, as rows of small strokes of one height. So, on the 8-bit
default rendition:

1. candidate pixels: bright (at least :data:`BRIGHT`) and brighter than their 31-pixel
   neighbourhood, or - for thin antialiased strokes that never reach that - far brighter
   than it (text on a dark border);
2. candidates joined across one-pixel gaps into components, kept when glyph-sized
   (height 5-120 px, not wider than a word) and thin: the bright area within the
   component's box is no deeper than a stroke (a restoration is bright all through, and
   only its rim is brighter than its surroundings - the box test sees the whole blob);
3. glyphs grouped into lines: vertically overlapping, of similar height, horizontally
   close (a gap under 1.5x the height); three glyphs, or two spanning twice their
   height, make a text line.

Each line's box, padded, is masked with the darkest value. What it misses (measured):
grey text on grey or bright anatomy, text across a bright tooth, single characters
(a lone "L"/"R" side marker, which identifies no one).
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
THIN_BRIGHT = 150
THIN_CONTRAST = 80
STROKE = 0.2
"""A glyph's stroke half-width is at most this share of its height (plus two pixels:
the joining dilation adds one)."""
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
    contrast = img - local
    # bright strokes; or, for thin antialiased strokes that never reach BRIGHT, strokes
    # that stand far above their surroundings (text on the dark border of an image)
    mask = ((u8 >= BRIGHT) & (contrast >= CONTRAST)) | ((u8 >= THIN_BRIGHT) & (
        contrast >= THIN_CONTRAST))  # fmt: skip
    # antialiased small glyphs fall apart into fragments: join what one pixel separates
    joined = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
    labels, count = ndimage.label(joined, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    areas = np.bincount(labels[mask], minlength=count + 1)
    # stroke half-width: how deep the bright area goes within a component's box (thin for
    # text; deep for a restoration, whose inside is bright though not brighter than its
    # surroundings, so that only its rim is a candidate)
    depth = ndimage.distance_transform_cdt(u8 >= BRIGHT, metric="chessboard")
    found: list[_Glyph] = []
    for n, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        h = sl[0].stop - sl[0].start - 2
        w = sl[1].stop - sl[1].start - 2
        if not (MIN_H <= h <= MAX_H) or w > 8 * max(h, 1) or int(areas[n]) < 6:
            continue
        if float(depth[sl].max()) > 2 + STROKE * h:  # within its box: a rim's blob counts
            continue
        found.append(_Glyph(sl[1].start + 1, sl[0].start + 1, sl[1].stop - 1, sl[0].stop - 1))
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
