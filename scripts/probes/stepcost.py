"""Eager batch 1, interleaved in one process: layer 2 alone, with its exit head, as the runner's
step, and the exit head alone and after its layer at 2 torch threads and switched to 1. Usage: GLUE_DIR=... python scripts/probes/stepcost.py CHECKPOINT   (100 SST-2 dev sentences,
5 rounds, medians)."""
import sys as _sys, os.path as _p
_sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, report, sst2_inputs  # noqa: E402
import sys
import torch
from metabert.model.multi_exit import MultiExitBert, EagerRunner
torch.set_num_threads(2)
m = MultiExitBert.from_pretrained(sys.argv[1]).eval()
r = EagerRunner(m)
xs = sst2_inputs(m, 100)
starts = [r.start(x) for x in xs]
def layer(s): m.run_layer(1, s[0], s[1])
def layer_head(s):
    h = m.run_layer(1, s[0], s[1]); m.exit_logits(1, h, s[1], train=False)
def step(s): r.step(1, s)
def step_noim(s):
    h = m.run_layer(1, s[0], s[1]); return (h, s[1]), m.exit_logits(1, h, s[1], train=False)
def at_one_thread(fn):
    torch.set_num_threads(1); fn(); torch.set_num_threads(2)
def head(s): m.exit_logits(1, s[0], s[1], train=False)
def head1(s): at_one_thread(lambda: head(s))
def layer_head1(s):
    h = m.run_layer(1, s[0], s[1]); at_one_thread(lambda: head((h, s[1])))
with torch.inference_mode():
    outputs = [(m.run_layer(1, s[0], s[1]), s[1]) for s in starts]
    v = {"layer": (layer, starts), "layer+head": (layer_head, starts), "step": (step, starts),
         "layer+head in tuple": (step_noim, starts), "head (2 threads)": (head, outputs),
         "head (1 thread, switched)": (head1, outputs), "layer+head at 1 thread": (layer_head1, starts)}
    report(interleaved(v, 5, repeat=5))
