"""eager-int8 at batch 1 with fp32 exit heads against INT8 heads' dense layers, interleaved in one
process: full model and early exit at the checkpoint's calibrated γ (the same γ for both), on N SST-2
dev sentences, R rounds, medians; and each variant's dev score over all 872 at batch 1 (early exit).
Usage: GLUE_DIR=... python scripts/probes/int8heads.py CHECKPOINT [N] [R]"""
import sys
import os.path as _p
sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, report, sst2_dev  # noqa: E402
import numpy as np
import torch
from metabert.engine import loop as engine
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.engine.resolve import resolve
from metabert.deploy.quantize import quantize_eager

torch.set_num_threads(2)
m = MultiExitBert.from_pretrained(sys.argv[1]).eval()
n, rounds = (int(sys.argv[2]) if len(sys.argv) > 2 else 200), (int(sys.argv[3]) if len(sys.argv) > 3 else 5)
policy = resolve(stored=m.config.exit_policy).policy
rows = sst2_dev()
xs = [dict(m.tokenizer([t], return_tensors="pt")) for t, _ in rows]
labels = [y for _, y in rows]
runners = {"fp32 heads": EagerRunner(quantize_eager(m, heads=False)), "int8 heads": EagerRunner(quantize_eager(m))}
variants = {}
for name, r in runners.items():
    variants[f"{name} full"] = (lambda x, r=r: engine.run_full(r, x), xs[:n])
    variants[f"{name} early"] = (lambda x, r=r: engine.run(r, x, policy), xs[:n])
print(f"policy {policy.describe()}, {n} sentences, {rounds} rounds, 2 threads")
res = interleaved(variants, rounds)
report(res)
for name in runners:
    print(f"{name}: early/full speed-up per round median "
          f"{np.median(np.array(res[name + ' full']) / np.array(res[name + ' early'])):.2f}x")
for name, r in runners.items():
    out = [engine.run(r, x, policy) for x in xs]
    acc = np.mean([int(o.predictions[0]) == y for o, y in zip(out, labels)]) * 100
    layers = np.mean([int(o.exit_layer[0]) for o in out])
    full = np.mean([int(engine.run_full(r, x).predictions[0]) == y for x, y in zip(xs, labels)]) * 100
    print(f"{name}: dev early {acc:.2f} (mean exit layer {layers:.2f}, layer speed-up {6 / layers:.2f}x), full {full:.2f}")
