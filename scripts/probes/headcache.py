"""What makes an exit cost more in the batch-1 loop than its pieces timed alone: its arithmetic,
reading its weights, or the number of torch calls? eager and eager-int8 on SST-2 dev sentences,
interleaved: every layer with no exit head; with each layer's own exit head after it (as early
exit runs); with the last exit's head after every layer (the same weights each time, so they stay
in cache); with each layer's head run twice; and with ten tanh calls on a (1, H) vector after
every layer (no weights, next to no arithmetic). Prints each variant against layers-only: the
median of the rounds' ratios and the implied cost per exit. Usage: GLUE_DIR=... python
scripts/probes/headcache.py CHECKPOINT [N] [R]"""
import sys
import os.path as _p
sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, sst2_inputs  # noqa: E402
import numpy as np
import torch
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.deploy.runners import EagerInt8Runner

torch.set_num_threads(2)
m = MultiExitBert.from_pretrained(sys.argv[1]).eval()
n, rounds = (int(sys.argv[2]) if len(sys.argv) > 2 else 100), (int(sys.argv[3]) if len(sys.argv) > 3 else 8)
xs = sst2_inputs(m, n)
HEADS = {"no head": lambda i, last: [], "own head": lambda i, last: [i], "last exit's head": lambda i, last: [last],
         "own head twice": lambda i, last: [i, i], "ten tanh calls": lambda i, last: ["tanh"] * 10}


def loop(model, x, heads):
    with torch.inference_mode():
        hidden, inputs = model.begin(x["input_ids"], x["attention_mask"], None, inference=True)
        last = model.num_layers - 1
        for i in range(model.num_layers):
            hidden = model.run_layer(i, hidden, inputs)
            for h in (heads(i, last) if i < last else [last]):
                if h == "tanh":
                    torch.tanh(hidden[:, 0])
                else:
                    logits = model.exit_logits(h, hidden, inputs, train=False)
        return logits


variants = {}
for r in (EagerRunner(m), EagerInt8Runner(m)):
    for kind, heads in HEADS.items():
        variants[f"{r.name}: {kind}"] = (lambda x, model=r.model, heads=heads: loop(model, x, heads), xs)
res = interleaved(variants, rounds)
for name in ("eager", "eager-int8"):
    base = np.array(res[f"{name}: no head"])
    print(f"{name}: every layer, no exit head but the last: {np.median(base):.0f} us")
    for kind in list(HEADS)[1:]:
        ratio = float(np.median(np.array(res[f"{name}: {kind}"]) / base))
        print(f"  {kind} after each of the first {m.num_layers - 1} layers: x{ratio:.3f}, "
              f"{(ratio - 1) * np.median(base) / (m.num_layers - 1):.0f} us per exit")
