#!/usr/bin/env python
"""How much does MetaBERT's inner step change the gradient? For one batch of real data on the
pretrained backbone, the first-order meta-gradient (query gradient at θ' = θ - α ∇L_support) is
compared with the plain gradient of the same query loss at θ, for a range of inner learning rates α
and both inner-loop parameter sets. Dropout is off, so the difference is the inner step alone.

Prints a Markdown table: α, adapted parameters, relative inner step ‖θ'-θ‖/‖θ‖, cosine between the
two gradients, and the query loss before and after adaptation.

Usage: GLUE_DIR=... python scripts/meta_probe.py [--task mrpc] [--alphas 1e-4,1e-3,1e-2,1e-1]
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from metabert import data as data_mod
from metabert import meta
from metabert.batching import encode, iterate, train_batches
from metabert.meta import MetaConfig
from metabert.modeling import MultiExitBert


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--alphas", default="1e-4,1e-3,1e-2,1e-1")
    parser.add_argument("--batches", type=int, default=4, help="batches of 32 averaged over")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    spec = data_mod.get_task(args.task)
    model = MultiExitBert.from_backbone(args.model, list(spec.labels), seed=args.seed).eval()
    train = data_mod.subsample(data_mod.load_glue(args.task, "train"), 32 * args.batches, args.seed)
    enc = encode(train, model.tokenizer, 128)
    batches = list(iterate(enc, train_batches(enc, 32, random.Random(args.seed)), model.tokenizer.pad_token_id))
    config = MetaConfig()
    print(f"{args.model} on {len(batches)} {args.task} batches of 32 (support 16 + query 16 each), dropout off, "
          "exit heads freshly initialised (the start of training)\n")
    print("| α | inner loop adapts | ‖θ'−θ‖/‖θ‖ | cosine(meta-gradient, plain gradient) | query loss at θ | at θ' |")
    print("|---|---|---|---|---|---|")
    for adapt in ("all", "exits"):
        for alpha in (float(a) for a in args.alphas.split(",")):
            rows = []
            for batch in batches:
                tasks = meta.split_tasks(batch, config)
                cfg = MetaConfig(inner_lr=alpha, adapt=adapt)
                grads, info = meta.meta_gradient(model, tasks, cfg)
                params = meta.parameters(model)
                query = sum(meta.task_loss(model, params, q) for _, q in tasks)
                plain = dict(zip(params, torch.autograd.grad(query, list(params.values()))))
                rows.append((info["inner_step_relative"], meta.cosine(grads, plain), query.item() / len(tasks),
                             info["query_loss"]))
            mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
            print(f"| {alpha:g} | {adapt} | {mean[0]:.2e} | {mean[1]:.4f} | {mean[2]:.4f} | {mean[3]:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
