"""Measure the candidate index libraries before choosing one (``--n 100000`` by default).

Lexical: SQLite FTS5 ``bm25()``, tantivy (block-max WAND), bm25s (static sparse matrix).
Dense: exact numpy matmul, usearch HNSW, faiss HNSW. Queries are the 500 PubMedQA
questions over synthetic passages (lexical) and random unit vectors (dense). Writes
``bench/results/knowledge-libs-<n>.json`` (``--parsers-only``: the parsers' speed, into
``bench/results/knowledge-parsers.json``). Libraries that are not installed are skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from knowledge_synth import SyntheticCorpus

BENCH = Path(__file__).resolve().parent
PUBMEDQA = BENCH.parent.parent / "shared" / "data" / "pubmedqa"
WORD = re.compile(r"\w+")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def timed_queries(fn: Any, queries: list[Any]) -> dict[str, float]:
    for q in queries[:20]:
        fn(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return {
        "p50_ms": round(pct(times, 50), 2),
        "p95_ms": round(pct(times, 95), 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def lexical(n: int, texts: list[str], questions: list[str], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    q_tokens = [[w for w in WORD.findall(q.lower()) if len(w) > 2] for q in questions]

    # SQLite FTS5
    db = sqlite3.connect(tmp / "fts.sqlite3")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize='unicode61')")
    t0 = time.perf_counter()
    with db:
        db.executemany("INSERT INTO t(body) VALUES (?)", ((x,) for x in texts))
    build = time.perf_counter() - t0

    def fts(tokens: list[str]) -> Any:
        expr = " OR ".join(f'"{w}"' for w in tokens)
        return db.execute(
            "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT 50", (expr,)
        ).fetchall()

    out["sqlite-fts5"] = {"build_s": round(build, 1), **timed_queries(fts, q_tokens)}
    db.close()

    try:
        import tantivy
    except ImportError:
        pass
    else:
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("body", stored=False)
        sb.add_integer_field("key", stored=False, fast=True)
        schema = sb.build()
        (tmp / "tv").mkdir()
        index = tantivy.Index(schema, path=str(tmp / "tv"))
        t0 = time.perf_counter()
        writer = index.writer(heap_size=200_000_000, num_threads=2)
        for i, x in enumerate(texts):
            writer.add_document(tantivy.Document(body=x, key=i))
        writer.commit()
        writer.wait_merging_threads()
        build = time.perf_counter() - t0
        index.reload()
        searcher = index.searcher()

        def tv(tokens: list[str]) -> Any:
            query = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Should, tantivy.Query.term_query(schema, "body", w))
                    for w in tokens
                ]
            )
            return searcher.search(query, 50).hits

        out["tantivy"] = {"build_s": round(build, 1), **timed_queries(tv, q_tokens)}

    try:
        import bm25s
    except ImportError:
        pass
    else:
        t0 = time.perf_counter()
        retriever = bm25s.BM25()
        retriever.index(
            bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False
        )
        build = time.perf_counter() - t0

        def bs(q: str) -> Any:
            return retriever.retrieve(
                bm25s.tokenize([q], stopwords="en", show_progress=False),
                k=50,
                show_progress=False,
                n_threads=1,
            )

        out["bm25s"] = {
            "build_s": round(build, 1),
            **timed_queries(bs, questions),
            "note": "static: any change rebuilds the whole index",
        }
    return out


def dense(n: int, tmp: Path, exact_only_at: int = 1_000_000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = np.random.default_rng(1)
    data = rng.standard_normal((n, 384), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.choice(n, 200, replace=False)] + 0.05 * rng.standard_normal(
        (200, 384), dtype=np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = [int(np.argmax(data @ q)) for q in queries[:50]]

    out["numpy-exact-f32"] = timed_queries(
        lambda q: np.argpartition(-(data @ q), 10)[:10], list(queries)
    )
    if n < exact_only_at:
        try:
            from usearch.index import Index
        except ImportError:
            pass
        else:
            for dtype in ("f32", "f16", "i8"):
                index = Index(
                    ndim=384,
                    metric="cos",
                    dtype=dtype,
                    connectivity=16,
                    expansion_add=128,
                    expansion_search=64,
                )
                t0 = time.perf_counter()
                index.add(np.arange(n, dtype=np.uint64), data, threads=2)
                build = time.perf_counter() - t0
                hits = sum(
                    int(index.search(q, 10).keys[0]) == t
                    for q, t in zip(queries[:50], truth, strict=True)
                )
                out[f"usearch-hnsw-{dtype}"] = {
                    "build_s": round(build, 1),
                    "recall@1_vs_exact": hits / 50,
                    **timed_queries(lambda q, ix=index: ix.search(q, 10), list(queries)),
                }
        try:
            import faiss
        except ImportError:
            pass
        else:
            faiss.omp_set_num_threads(2)
            findex = faiss.IndexHNSWFlat(384, 16, faiss.METRIC_INNER_PRODUCT)
            findex.hnsw.efConstruction = 128
            findex.hnsw.efSearch = 64
            t0 = time.perf_counter()
            findex.add(data)
            build = time.perf_counter() - t0
            faiss.omp_set_num_threads(1)
            hits = sum(
                int(findex.search(q[None, :], 10)[1][0][0]) == t
                for q, t in zip(queries[:50], truth, strict=True)
            )
            out["faiss-hnsw-f32"] = {
                "build_s": round(build, 1),
                "recall@1_vs_exact": hits / 50,
                **timed_queries(lambda q: findex.search(q[None, :], 10), list(queries)),
            }
    return out


def parsers(tmp: Path) -> dict[str, Any]:
    """Throughput of the chosen parsers on generated files (pages/s, MB/s)."""
    import sys

    sys.path.insert(0, str(BENCH.parent / "src"))
    from fpdf import FPDF

    from iatros.knowledge.parsing import parse

    corpus = SyntheticCorpus()
    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for i in range(50):
        pdf.add_page()
        pdf.multi_cell(0, 5, " ".join(corpus.passages(i * 3, 3)))
    pdf.output(str(tmp / "doc.pdf"))
    data = (tmp / "doc.pdf").read_bytes()
    t0 = time.perf_counter()
    parse("doc.pdf", data)
    pdf_s = time.perf_counter() - t0
    html = (
        "<html><body>"
        + "".join(f"<h2>Section {i}</h2><p>{x}</p>" for i, x in enumerate(corpus.passages(0, 2000)))
        + "</body></html>"
    )
    t0 = time.perf_counter()
    parse("doc.html", html.encode())
    html_s = time.perf_counter() - t0
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    t0 = time.perf_counter()
    Collect().feed(html)
    stdlib_s = time.perf_counter() - t0
    mb = len(html.encode()) / 1e6
    return {
        "pypdf_pages_per_s": round(50 / pdf_s, 1),
        "selectolax_walk_mb_per_s": round(mb / html_s, 1),
        "stdlib_html_parser_text_only_mb_per_s": round(mb / stdlib_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--skip-lexical", action="store_true")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--parsers-only", action="store_true")
    args = ap.parse_args()
    questions = [json.loads(x)["question"] for x in (PUBMEDQA / "queries.jsonl").open()]
    tmp = Path(tempfile.mkdtemp(prefix="kb-libs-"))
    result: dict[str, Any] = {"n": args.n}
    try:
        if args.parsers_only:
            print(json.dumps(parsers(tmp), indent=2))
            path = BENCH / "results" / "knowledge-parsers.json"
            path.write_text(json.dumps(parsers(tmp), indent=2) + "\n")
            return
        if not args.skip_lexical:
            corpus = SyntheticCorpus()
            texts = list(corpus.passages(0, args.n))
            result["lexical"] = lexical(args.n, texts, questions, tmp)
            del texts
        if not args.skip_dense:
            result["dense"] = dense(args.n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    path = BENCH / "results" / f"knowledge-libs-{args.n}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
