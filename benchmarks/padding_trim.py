"""How much padding early exit carries at batch B, and how much trimming it saves: token-layers
(rows x padded length, summed over the layers each batch runs) over SST-2 dev in file order, for the
full model, early exit that keeps the batch's padded length, and early exit that drops the trailing
positions no running row needs (``adapters.trim_padding``).

Usage: GLUE_DIR=... python benchmarks/padding_trim.py CHECKPOINT GAMMA [BATCH]"""

import os
import sys

import numpy as np

from metabert.data.batching import encode
from metabert.data.tasks import load_glue
from metabert.eval.evaluate import all_exit_logits
from metabert.engine.policies import get_policy, simulate_exits
from metabert.model.multi_exit import MultiExitBert


def main(checkpoint: str, gamma: float, batch_size: int = 32) -> None:
    model = MultiExitBert.from_pretrained(checkpoint).eval()
    data = encode(load_glue("sst2", "dev", os.environ.get("GLUE_DIR")), model.tokenizer, 128)
    layers = simulate_exits(all_exit_logits(model, data, 64), get_policy("entropy", gamma)).numpy()
    lengths = np.array([len(ids) for ids in data.input_ids])
    full = padded = trimmed = 0
    for s in range(0, len(lengths), batch_size):
        length, exits = lengths[s:s + batch_size], layers[s:s + batch_size]
        full += model.num_layers * len(length) * length.max()
        for i in range(model.num_layers):
            alive = exits > i
            if not alive.any():
                break
            padded += alive.sum() * length.max()
            trimmed += alive.sum() * length[alive].max()
    print(f"token-layers at batch {batch_size}, γ={gamma}: full {full}, early exit padded {padded} "
          f"({full / padded:.2f}x less), trimmed {trimmed} ({full / trimmed:.2f}x less; "
          f"{100 * (1 - trimmed / padded):.1f}% fewer than padded)")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
