"""eager / eager-int8 at batch 1 on the SST-2 dev sentences, interleaved: the full model, early exit
with a threshold no exit passes (every layer, head and test), and one that the first exit always
passes (embeddings, one layer, head, test); with the mean of the two splits into fixed cost and cost
per layer. Usage: GLUE_DIR=... python scripts/probes/exitsplit.py CHECKPOINT [N] [R]"""
import sys
import os.path as _p
sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, report, sst2_inputs  # noqa: E402
import numpy as np
import torch
from metabert.engine import loop as engine
from metabert.engine.policies import get_policy
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.deploy.runners import EagerInt8Runner

torch.set_num_threads(2)
m = MultiExitBert.from_pretrained(sys.argv[1]).eval()
n, rounds = (int(sys.argv[2]) if len(sys.argv) > 2 else 200), (int(sys.argv[3]) if len(sys.argv) > 3 else 5)
xs = sst2_inputs(m, n)
never, always = get_policy("entropy", -1.0), get_policy("entropy", 100.0)
variants = {}
for r in (EagerRunner(m), EagerInt8Runner(m)):
    variants[f"{r.name} full"] = (lambda x, r=r: engine.run_full(r, x), xs)
    variants[f"{r.name} never exit"] = (lambda x, r=r: engine.run(r, x, never), xs)
    variants[f"{r.name} exit 1"] = (lambda x, r=r: engine.run(r, x, always), xs)
res = interleaved(variants, rounds)
report(res)
for name in ("eager", "eager-int8"):
    full, nev, one = (np.median(res[f"{name} {k}"]) for k in ("full", "never exit", "exit 1"))
    per_layer = (nev - one) / 5  # a layer, its head and its test
    print(f"{name}: per layer with head and test {per_layer:.0f} us; fixed (exit 1 less one such layer) "
          f"{one - per_layer:.0f} us; full {full:.0f} us = {full / per_layer:.2f} such layers")
