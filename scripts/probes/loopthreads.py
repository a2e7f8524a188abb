"""Does an exit's cost in the batch-1 loop come from waking torch's worker threads after the serial
exit work? eager and eager-int8 on SST-2 dev sentences, interleaved: the full model and the early
exit with a threshold no exit passes, at THREADS torch threads (run it at 1 and at 2: at 1 there is
no worker to wake). Usage: GLUE_DIR=... python scripts/probes/loopthreads.py CHECKPOINT THREADS [N] [R]"""
import sys
import os.path as _p
sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, sst2_inputs  # noqa: E402
import numpy as np
import torch
from metabert.engine import loop as engine
from metabert.engine.policies import EntropyPolicy
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.deploy.runners import EagerInt8Runner

threads = int(sys.argv[2])
torch.set_num_threads(threads)
m = MultiExitBert.from_pretrained(sys.argv[1]).eval()
n, rounds = (int(sys.argv[3]) if len(sys.argv) > 3 else 100), (int(sys.argv[4]) if len(sys.argv) > 4 else 8)
xs = sst2_inputs(m, n)
never = EntropyPolicy().never_exits()
variants = {}
for r in (EagerRunner(m), EagerInt8Runner(m)):
    variants[f"{r.name} full"] = (lambda x, r=r: engine.run_full(r, x), xs)
    variants[f"{r.name} never exit"] = (lambda x, r=r: engine.run(r, x, never), xs)
res = interleaved(variants, rounds)
for name in ("eager", "eager-int8"):
    full, nev = np.array(res[f"{name} full"]), np.array(res[f"{name} never exit"])
    ratio = float(np.median(nev / full))
    print(f"{threads} torch threads, {name}: full model {np.median(full):.0f} us; never exit x{ratio:.3f}, "
          f"{(ratio - 1) * np.median(full) / (m.num_layers - 1):.0f} us per exit")
