"""``metabert export --checkpoint DIR --format onnx --output DIR``: exit-aware ONNX graphs (embeddings,
each layer with its exit head, and the full model as a baseline), checked against PyTorch."""

from __future__ import annotations

import numpy as np
import torch

from metabert.modeling import MultiExitBert
from metabert.onnx_runtime import OrtMultiExit, export


def add_parser(sub, name):
    p = sub.add_parser(name, help="export for ONNX Runtime", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--output", required=True, help="folder for the graphs")
    p.set_defaults(run=run)


def check(model: MultiExitBert, runtime: OrtMultiExit) -> float:
    """Largest absolute difference of every exit's logits, PyTorch against ONNX Runtime."""
    texts = ["a short one", "a somewhat longer input sentence , with punctuation and more words in it", "mid size"]
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model(**enc).numpy()
    got = runtime.all_exit_logits(enc["input_ids"].numpy(), enc["attention_mask"].numpy(),
                                  enc["token_type_ids"].numpy() if "token_type_ids" in enc else None)
    return float(np.abs(ref - got).max())


def run(args) -> int:
    model = MultiExitBert.from_pretrained(args.checkpoint)
    out = export(model, args.checkpoint, args.output)
    diff = check(model, OrtMultiExit(out))
    print(f"exported {model.num_layers} layers with their exits to {out}; "
          f"max |PyTorch - ONNX Runtime| over every exit's logits: {diff:.2e}")
    if diff > 1e-4:
        raise ValueError(f"exported graphs differ from PyTorch by {diff:.2e} (> 1e-4)")
    return 0
