"""What the exit machinery costs at batch 1 in eager PyTorch (docs/ENGINE.md).

Usage: python benchmarks/exit_overhead.py CHECKPOINT [TASK] [N]   (GLUE_DIR must point at GLUE)
Times, on the first N dev examples of TASK: one layer, one exit head, pooling, the entropy policy's
step, the host check; and the whole model with and without running every exit (threshold 0: the
early-exit loop that never leaves), interleaved, 3 rounds.
"""

import sys
import time

import numpy as np
import torch

from metabert.data.tasks import load_glue
from metabert.engine.policies import EntropyPolicy
from metabert.model.multi_exit import MultiExitBert


def per_call_us(fn, n=2000):
    for _ in range(100):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main(checkpoint, task="sst2", count=100):
    torch.set_num_threads(2)
    model = MultiExitBert.from_pretrained(checkpoint).eval()
    data = load_glue(task, "dev").examples[:count]
    encs = [model.tokenizer(e.text, e.text_pair, return_tensors="pt", truncation=True, max_length=128) for e in data]
    policy = EntropyPolicy(0.0)
    with torch.inference_mode():
        first = encs[0]
        hidden = model.embed(first["input_ids"], first.get("token_type_ids"))
        layer, head = model.encoder.encoder.layer[0], model.exits[0]
        logits = head.infer(hidden.mean(1))
        state = policy.init_state(1)
        done, _ = policy.step(logits, state)
        print(f"first example, {first['input_ids'].shape[1]} tokens:")
        print(f"  one layer      {per_call_us(lambda: layer(hidden, attention_mask=None), 300):8.1f} us")
        print(f"  exit head      {per_call_us(lambda: head.infer(hidden.mean(1))):8.1f} us")
        print(f"  mean pooling   {per_call_us(lambda: hidden.mean(1)):8.1f} us")
        print(f"  policy step    {per_call_us(lambda: policy.step(logits, state)):8.1f} us")
        print(f"  host check     {per_call_us(lambda: bool(done[0])):8.1f} us")
        full, early = np.zeros((3, len(encs))), np.zeros((3, len(encs)))
        for e in encs[:10]:
            model.full_logits(**e)
            model.early_exit(**e, policy=policy)
        for r in range(3):
            for i, e in enumerate(encs):
                t0 = time.perf_counter()
                model.full_logits(**e)
                t1 = time.perf_counter()
                model.early_exit(**e, policy=policy)
                early[r, i], full[r, i] = time.perf_counter() - t1, t1 - t0
        f, g = np.median(full, 0).sum(), np.median(early, 0).sum()
        print(f"{len(encs)} {task} dev examples: full model {f / len(encs) * 1e3:.3f} ms, every exit run but never "
              f"taken {g / len(encs) * 1e3:.3f} ms per example: +{(g / f - 1) * 100:.1f}%")


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]), *(int(a) for a in sys.argv[3:4]))
