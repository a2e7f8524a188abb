"""``metabert export --checkpoint DIR --format onnx --output DIR``: exit-aware ONNX graphs (embeddings,
each layer with its exit head, and the full model as a baseline), checked against PyTorch."""

from __future__ import annotations

from metabert.modeling import MultiExitBert
from metabert.onnx_runtime import OrtMultiExit, check_export, export


def add_parser(sub, name):
    p = sub.add_parser(name, help="export for ONNX Runtime", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--output", required=True, help="folder for the graphs")
    p.set_defaults(run=run)


def run(args) -> int:
    model = MultiExitBert.from_pretrained(args.checkpoint)
    out = export(model, args.checkpoint, args.output)
    diff = check_export(model, OrtMultiExit(out))
    print(f"exported {model.num_layers} layers with their exits to {out}; "
          f"max |PyTorch - ONNX Runtime| over every exit's logits: {diff:.2e}")
    if diff > 1e-4:
        raise ValueError(f"exported graphs differ from PyTorch by {diff:.2e} (> 1e-4)")
    return 0
