"""Native extensions that crash when loaded in the wrong order.

usearch (the embedded knowledge index) exports a static copy of libstdc++'s locale
facets process-wide; onnxruntime (short embedding batches) initialised after it crashes
with SIGSEGV. Each check runs in a fresh interpreter, since the order is per process.
"""

from __future__ import annotations

import subprocess
import sys

SESSION = """
import numpy as np, onnx.helper as h, onnxruntime as ort
x, y = h.make_tensor_value_info("x", 1, [2]), h.make_tensor_value_info("y", 1, [2])
graph = h.make_graph([h.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]); model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
assert session.run(None, {"x": np.array([1, 2], np.float32)})[0].tolist() == [2.0, 4.0]
from usearch.index import Index
index = Index(ndim=4)
index.add(np.arange(3), np.eye(3, 4, dtype=np.float32))
assert int(index.search(np.eye(1, 4, dtype=np.float32)[0], 1).keys[0]) == 0
print("ok")
"""


def test_onnxruntime_loads_after_the_embedded_knowledge_index() -> None:
    """The gateway's order: the knowledge base (usearch) starts, then the embeddings."""
    program = f"import iatros.knowledge.backends.embedded\n{SESSION}"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        result.returncode,
        result.stderr[-2000:],
    )
