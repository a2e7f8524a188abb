"""eager / eager-int8 at batch 1 on SST-2 dev sentences, interleaved: the full model, and the early
exit with a threshold no exit passes (every layer, head and test) with the exit test as the engine
runs it at batch 1 (``engine.leaves_one``: Python floats, ``ExitPolicy.decide_one``) and with the
policy's torch ``step`` alone (what the engine ran before); what each exit costs in the loop, per
variant. Usage: GLUE_DIR=... python scripts/probes/scalartest.py CHECKPOINT|random [N] [R]
(random: MiniLM-L6 with untrained two-class heads; the costs depend on the shapes, not the weights)."""
import sys
import os.path as _p
sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, report, sst2_inputs  # noqa: E402
import dataclasses
import numpy as np
import torch
from metabert.engine import loop as engine
from metabert.engine.policies import EntropyPolicy
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.deploy.runners import EagerInt8Runner


@dataclasses.dataclass(frozen=True)
class StepOnly(EntropyPolicy):
    """The entropy rule without its Python-float shortcut: every test through torch ``step``."""

    def decide_one(self, values):
        return None


torch.set_num_threads(2)
torch.manual_seed(0)
source = sys.argv[1]
m = (MultiExitBert.from_backbone("minilm-l6", ["0", "1"]) if source == "random" else MultiExitBert.from_pretrained(source)).eval()
n, rounds = (int(sys.argv[2]) if len(sys.argv) > 2 else 120), (int(sys.argv[3]) if len(sys.argv) > 3 else 8)
xs = sst2_inputs(m, n)
scalar, step_only = EntropyPolicy(0.0), StepOnly(0.0)  # H < 0 never holds
variants = {}
for r in (EagerRunner(m), EagerInt8Runner(m)):
    variants[f"{r.name} full"] = (lambda x, r=r: engine.run_full(r, x), xs)
    variants[f"{r.name} never exit, torch step"] = (lambda x, r=r: engine.run(r, x, step_only), xs)
    variants[f"{r.name} never exit, Python floats"] = (lambda x, r=r: engine.run(r, x, scalar), xs)
res = interleaved(variants, rounds)
report(res)
for name in ("eager", "eager-int8"):
    full = np.array(res[f"{name} full"])
    for kind in ("torch step", "Python floats"):
        never = np.array(res[f"{name} never exit, {kind}"])
        print(f"{name}, {kind}: each exit in the loop {(np.median(never) - np.median(full)) / (m.num_layers - 1):.0f} us "
              f"(never exit / full, median of the rounds' ratios: {np.median(never / full):.3f})")
