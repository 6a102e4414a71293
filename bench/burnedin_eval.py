"""How well burned-in text is found and masked (``clinical/imaging/burnedin.py``).

    .venv/bin/python bench/burnedin_eval.py            # 60 images per set (~1 min)
    .venv/bin/python bench/burnedin_eval.py --images 20

Synthetic radiographs (``iatros.testing.radiographs``: dark background, bright teeth,
saturated round restorations, sensor noise) at intraoral (1200x900) and panoramic
(2400x1200) sizes, with 0-4 text lines each (names, ids, birth dates, dates, a practice
name), burned in with DejaVu Sans, regular or bold, 12-44 px, at 90-100 % of the maximum
value, in corners, along the edges or anywhere. Each image goes through the real
pipeline (``ingest.process``: DICOM decode, default window, detection, masking of the
stored values). A text line counts as **masked** when at least 98 % of its ink pixels end
up inside masked regions (what remains is at most a stray pixel of a glyph's edge).
**False masking**: masked pixels outside every text line's (padded) box, as a share of
the image, and the share of text-free images with anything masked.

Two harder sets say where the method stops: text at 55-80 % of the maximum (grey text
on grey anatomy), and text 7-11 px high.

Writes ``bench/results/burnedin.json`` and ``bench/results/burnedin.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))

from iatros.clinical.imaging.ingest import process  # noqa: E402
from iatros.clinical.imaging.settings import ImagingSettings  # noqa: E402
from iatros.testing.radiographs import anatomy, burn_text, dicom_bytes, sample_texts  # noqa: E402

SIZES = [(1200, 900), (2400, 1200)]


Line = tuple[str, np.ndarray, tuple[int, int, int, int]]


def make(
    seed: int, size_range: tuple[int, int], level_range: tuple[float, float]
) -> tuple[np.ndarray, list[Line]]:
    rng = random.Random(seed)
    width, height = SIZES[seed % len(SIZES)]
    values = anatomy(width, height, 4095, seed)
    count = rng.randrange(0, 5)
    texts = sample_texts(rng)
    lines = []
    used: list[tuple[int, int, int, int]] = []
    for n in range(count):
        size = rng.randrange(*size_range)
        text = texts[n % len(texts)]
        tw, th = int(len(text) * size * 0.65), size + 8
        for _ in range(100):
            place = rng.random()
            if place < 0.4:  # a corner
                x = 10 if rng.random() < 0.5 else width - tw - 10
                y = 10 + rng.randrange(0, 3) * th if rng.random() < 0.5 else height - th * (
                    1 + rng.randrange(0, 3))  # fmt: skip
            elif place < 0.7:  # along an edge
                x = rng.randrange(10, max(11, width - tw - 10))
                y = 10 if rng.random() < 0.5 else height - th - 10
            else:  # anywhere
                x = rng.randrange(10, max(11, width - tw - 10))
                y = rng.randrange(10, max(11, height - th - 10))
            box = (x - 4, y - 4, x + tw + 4, y + th + 4)
            if all(box[2] < u[0] or box[0] > u[2] or box[3] < u[1] or box[1] > u[3]
                   for u in used):  # fmt: skip
                break
        used.append(box)
        ink = burn_text(values, text, x, y, size, rng.uniform(*level_range), rng.random() < 0.3)
        lines.append((text, ink, box))
    return values, lines


def evaluate(name: str, images: int, size_range: tuple[int, int],
             level_range: tuple[float, float], seed0: int) -> dict[str, Any]:  # fmt: skip
    settings = ImagingSettings()
    masked_lines = partial_lines = total_lines = 0
    false_share: list[float] = []
    clean_images = clean_with_mask = 0
    times: list[float] = []
    missed: list[str] = []
    for i in range(images):
        values, lines = make(seed0 + i, size_range, level_range)
        data = dicom_bytes(values)
        start = time.perf_counter()
        result = process(data, b"k" * 32, settings)
        times.append(time.perf_counter() - start)
        regions = result.meta["deidentified"]["burned_in_text"]["regions_masked"]
        covered = np.zeros(values.shape, bool)
        for x, y, w, h in regions:
            covered[y : y + h, x : x + w] = True
        allowed = np.zeros(values.shape, bool)
        for text, ink, (x0, y0, x1, y1) in lines:
            total_lines += 1
            share = float(covered[ink].mean()) if ink.any() else 1.0
            if share >= 0.98:
                masked_lines += 1
            elif share >= 0.5:
                partial_lines += 1
            else:
                missed.append(text)
            allowed[max(0, y0 - 10) : y1 + 10, max(0, x0 - 10) : x1 + 10] = True
        false_share.append(float((covered & ~allowed).mean()))
        if not lines:
            clean_images += 1
            clean_with_mask += bool(regions)
    return {
        "set": name,
        "images": images,
        "text_lines": total_lines,
        "masked": masked_lines,
        "masked_share": round(masked_lines / total_lines, 4) if total_lines else None,
        "partly_masked": partial_lines,
        "missed": total_lines - masked_lines - partial_lines,
        "missed_examples": missed[:8],
        "false_masked_area_mean": round(statistics.fmean(false_share), 6),
        "false_masked_area_max": round(max(false_share), 6),
        "text_free_images": clean_images,
        "text_free_images_with_any_mask": clean_with_mask,
        "pipeline_s_median": round(statistics.median(times), 3),
        "font_px": list(size_range),
        "text_level": list(level_range),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    sets = [
        evaluate("main: 12-44 px, 90-100 % of max", args.images, (12, 45), (0.9, 1.0), 1000),
        evaluate("grey text: 55-80 % of max", args.images // 2, (12, 45), (0.55, 0.8), 5000),
        evaluate("small text: 7-11 px", args.images // 2, (7, 12), (0.9, 1.0), 9000),
    ]
    out = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "shared machine (2 CPUs, other work running)",
        },
        "method": "bright glyph lines (clinical/imaging/burnedin.py)",
        "criterion": ">= 98 % of a text line's ink pixels inside masked regions",
        "sets": sets,
    }
    results = BENCH / "results"
    (results / "burnedin.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = [
        f"| {s['set']} | {s['images']} | {s['text_lines']} | **{s['masked_share']:.1%}** | "
        f"{s['partly_masked']} | {s['missed']} | {s['false_masked_area_mean']:.4%} | "
        f"{s['text_free_images_with_any_mask']}/{s['text_free_images']} | "
        f"{s['pipeline_s_median']:.2f} s |"
        for s in sets
    ]
    md = "\n".join([
        "# Burned-in text: detection and masking",
        "",
        f"Written by `bench/burnedin_eval.py` on {out['date']} ({os.cpu_count()} CPUs, shared "
        "machine). Synthetic radiographs with text burned in (see the script's docstring); a "
        "line counts as masked when >= 98 % of its ink pixels are inside masked regions.",
        "",
        "| set | images | text lines | masked | partly | missed | false-masked area "
        "(mean) | text-free images with a mask | pipeline per image (median) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The pipeline time is decode + de-identification + detection + masking + renditions "
        "for one image (intraoral and panoramic sizes alternate).",
        "",
    ])  # fmt: skip
    (results / "burnedin.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
