"""Upload-to-viewable time and memory for a 3000x1500 16-bit panoramic DICOM.

    .venv/bin/python bench/radiograph_bench.py             # 5 uploads (under a minute)
    .venv/bin/python bench/radiograph_bench.py --repeats 20 # the committed results
    .venv/bin/python bench/radiograph_bench.py --repeats 3

An Iatros server runs in its own process (``iatros serve``, SQLite store, in-process job
queue, the test chat model: nothing else to load). The client generates the panoramic
once (``iatros.testing.radiographs``: 3000x1500, 12 bits stored in 16, two lines of
burned-in text, explicit VR little endian, 9 MB) and, per repetition, times:

- **accepted**: ``POST /v1/radiographs/studies`` until its 202 (the multipart read and
  the full validation: header, transfer syntax, size, a complete decode);
- **ready**: until ``GET /v1/radiographs/studies/{id}`` says ``ready`` (polled every
  20 ms: the background job's decode, de-identification, text detection and masking,
  renditions, sealing and storing);
- **viewable**: until the default rendition (``render.png``) has been downloaded, and
  the thumbnail with it: what the viewer shows first.

Memory: the server process's peak resident set (``VmHWM`` from ``/proc``) after start and
after all uploads, and the growth between them; and, apart, the Python-level peak of
the validation plus the processing of one file in this process (``tracemalloc``: numpy
arrays and Python objects, not Pillow's or the decoders' C buffers).

Writes ``bench/results/radiographs.json`` and ``bench/results/radiographs.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))

from iatros.clinical.imaging.formats import probe  # noqa: E402
from iatros.clinical.imaging.ingest import process  # noqa: E402
from iatros.clinical.imaging.settings import ImagingSettings  # noqa: E402
from iatros.testing.radiographs import dicom_bytes, radiograph  # noqa: E402

KEY = "bench-admin-key-radiographs-0123456789abcdef"


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = data_dir / "config.yaml"
    config.write_text(
        f"data_dir: {data_dir}\n"
        "providers: {t: {type: test}}\n"
        "deployments: {t-chat: {provider: t, model: test-chat}}\n"
        "models: {assistant: {deployments: [t-chat]}}\n"
        "embeddings: {default_model: null}\n"
        "cache: {enabled: false}\n"
    )
    port = _free_port()
    env = {**os.environ, "IATROS_ADMIN_KEY": KEY, "IATROS_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/iatros"), "serve", "--port", str(port), "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def _one(http: httpx.Client, data: bytes, n: int) -> dict[str, float]:
    start = time.perf_counter()
    resp = http.post(
        "/v1/radiographs/studies",
        data={"patient_id": f"bench-{n}"},
        files=[("files", ("pano.dcm", data, "application/dicom"))],
    )
    accepted = time.perf_counter()
    if resp.status_code != 202:
        raise RuntimeError(resp.text)
    sid = resp.json()["id"]
    while True:
        study = http.get(f"/v1/radiographs/studies/{sid}").json()
        if study["status"] != "processing":
            break
        time.sleep(0.02)
    ready = time.perf_counter()
    if study["status"] != "ready":
        raise RuntimeError(str(study))
    iid = study["images"][0]["id"]
    render = http.get(f"/v1/radiographs/images/{iid}/render.png")
    thumb = http.get(f"/v1/radiographs/images/{iid}/thumbnail.png")
    viewable = time.perf_counter()
    assert render.status_code == 200 and thumb.status_code == 200
    return {
        "accepted_s": accepted - start,
        "ready_s": ready - start,
        "viewable_s": viewable - start,
        "render_png_bytes": float(len(render.content)),
    }


def _python_peak(data: bytes) -> dict[str, float]:
    settings = ImagingSettings()
    tracemalloc.start()
    start = time.perf_counter()
    probe(data, settings, "files.0")
    result = process(data, b"k" * 32, settings)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    masked = len(result.meta["deidentified"]["burned_in_text"]["regions_masked"])
    return {"peak_mib": peak / 2**20, "seconds": elapsed, "text_regions_masked": masked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    made = radiograph(3000, 1500, texts=2, seed=7, size=32)
    data = dicom_bytes(made.values)
    in_process = [_python_peak(data) for _ in range(2)][-1]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start(Path(tmp))
        try:
            hwm_start = _hwm_kib(proc.pid)
            runs = []
            with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"},
                              timeout=120) as http:  # fmt: skip
                _one(http, data, -1)  # warm-up: imports, first decode
                hwm_warm = _hwm_kib(proc.pid)
                for n in range(args.repeats):
                    runs.append(_one(http, data, n))
            hwm_end = _hwm_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    out: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "shared machine (2 CPUs, other work running at the same time)",
                    "load_average_1m_before_after": [round(load_before[0], 2),
                                                     round(os.getloadavg()[0], 2)]},
        "image": {"width": 3000, "height": 1500, "bits_stored": 12, "bits_allocated": 16,
                  "transfer_syntax": "explicit VR little endian", "file_bytes": len(data),
                  "burned_in_text_lines": len(made.texts)},
        "repeats": args.repeats,
        "median": {"accepted_s": med("accepted_s"), "ready_s": med("ready_s"),
                   "viewable_s": med("viewable_s")},
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
        "server_peak_rss_mib": {
            "after_start": round(hwm_start / 1024, 1),
            "after_warm_up_upload": round(hwm_warm / 1024, 1),
            "after_all_uploads": round(hwm_end / 1024, 1),
            "growth_from_start": round((hwm_end - hwm_start) / 1024, 1),
        },
        "pipeline_in_process": {k: round(v, 3) for k, v in in_process.items()},
    }  # fmt: skip
    results = BENCH / "results"
    (results / "radiographs.json").write_text(json.dumps(out, indent=2) + "\n")
    m, rss = out["median"], out["server_peak_rss_mib"]
    md = "\n".join([
        "# Radiographs: upload to viewable, memory",
        "",
        f"Written by `bench/radiograph_bench.py` on {out['date']} ({os.cpu_count()} CPUs, "
        "**shared machine**: other work ran at the same time). A generated 3000x1500 "
        f"panoramic, 16-bit DICOM ({len(data) / 2**20:.1f} MB, two lines of burned-in text), "
        f"uploaded {args.repeats} times to an `iatros serve` process; medians. Load average "
        f"(1 min) before/after: {out['machine']['load_average_1m_before_after']} - the "
        "times vary several-fold with what else runs.",
        "",
        "| measure | median |",
        "|---|---|",
        f"| upload accepted (202: multipart read + full validation) | {m['accepted_s']:.2f} s |",
        f"| study ready (background job: de-identification, text masking, renditions, "
        f"sealed storage) | {m['ready_s']:.2f} s |",
        f"| **viewable** (default rendition and thumbnail downloaded) | "
        f"**{m['viewable_s']:.2f} s** |",
        "",
        "| server memory (peak RSS, VmHWM) | MiB |",
        "|---|---|",
        f"| after start (test chat model, no local model loaded) | {rss['after_start']} |",
        f"| after the warm-up upload | {rss['after_warm_up_upload']} |",
        f"| after all uploads | {rss['after_all_uploads']} |",
        f"| **growth for processing panoramics** | **{rss['growth_from_start']}** |",
        "",
        f"Python-level peak (tracemalloc) of validating and processing one file in process: "
        f"{out['pipeline_in_process']['peak_mib']:.0f} MiB in "
        f"{out['pipeline_in_process']['seconds']:.2f} s.",
        "",
    ])  # fmt: skip
    (results / "radiographs.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
