"""Per-exit cost inside the fused graph, interleaved in one process: full graph vs fused graph with a
threshold no exit passes (all layers, every head, test and If) vs the chain of per-layer sessions.
Usage: GLUE_DIR=... python scripts/probes/exitcost.py COUNT ROUNDS ONNX_FOLDER [ONNX_FOLDER ...] (folders from `metabert export`, with
`--quantize int8 --no-calibrate` for INT8; SST-2 dev sentences at batch 1)."""
import sys as _sys, os.path as _p
_sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, report, sst2_dev  # noqa: E402
import sys
import torch
from metabert.deploy.ort_runner import OrtMultiExit
from metabert.engine.policies import EntropyPolicy

count, rounds, folders = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rows = sst2_dev(count)
never = EntropyPolicy(0.0)
variants = {}
for folder in folders:
    r = OrtMultiExit(folder)
    inputs = [{k: torch.from_numpy(v) for k, v in r.tokenizer([t], return_tensors="np").items()} for t, _ in rows]
    def chain(x, r=r):
        state = r.start(x)
        for i in range(r.num_layers):
            state, _ = r.step(i, state)
    variants[f"{r.name} full graph"] = (lambda x, r=r: r.full_session.run(None, r._feeds(x)), inputs)
    variants[f"{r.name} fused, never exit"] = (lambda x, r=r: r.early_exit_one(x, never), inputs)
    variants[f"{r.name} chain of layer sessions"] = (chain, inputs)
report(interleaved(variants, rounds, warm=10), "us per example")
