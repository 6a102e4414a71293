"""Export a sentence-transformers model's transformer to ONNX, in a child process.

``python -m iatros.providers.onnx_export MODEL_DIR OUT.onnx``. The embedding provider
runs this as a separate process because PyTorch's exporter keeps about 160 MB it never
returns; a child gives all of it back when it exits.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "hidden"


def export(model_dir: str, out: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
    transformer: Any = model[0].auto_model
    transformer.eval()
    example = model.tokenizer(["a probe"], return_tensors="pt")
    names = [n for n in INPUT_NAMES if n in example]

    class Hidden(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(names, tensors, strict=True))).last_hidden_state

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(
            Hidden(transformer),
            tuple(example[n] for n in names),
            out,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, OUTPUT_NAME]},
            opset_version=17,
            dynamo=False,
        )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m iatros.providers.onnx_export MODEL_DIR OUT.onnx")
    export(sys.argv[1], sys.argv[2])
