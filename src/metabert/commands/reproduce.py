"""``metabert reproduce --tasks cola,rte,mrpc,sst2 --methods joint,two-stage,alternating,meta --seeds 3
--output DIR``: MetaBERT's Table II and Fig. 2 from the same backbone and budget, resumable."""

from __future__ import annotations

import sys

from metabert.commands import train as train_cmd
from metabert.reproduce import reproduce
from metabert.training import TrainConfig


def add_parser(sub, name):
    p = sub.add_parser(name, help="train and compare methods on several tasks and seeds (Table II)",
                       description=__doc__)
    train_cmd.add_training_options(p)
    p.add_argument("--tasks", default="cola,rte,mrpc,sst2")
    p.add_argument("--methods", default="joint,two-stage,alternating,meta")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--speedups", default="1.5,2", help="layer speed-ups at which to report early exit")
    p.set_defaults(run=run)


def run(args) -> int:
    if not args.output:
        raise ValueError("--output is required")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = TrainConfig(**{**train_cmd.config_fields(args), "task": tasks[0], "method": methods[0]})
    for m in methods:  # fail before hours of training, not after
        TrainConfig(**{**train_cmd.config_fields(args), "task": tasks[0], "method": m})
    path = reproduce(base, tasks, methods, args.seeds, args.output, [float(s) for s in args.speedups.split(",")],
                     command="metabert " + " ".join(sys.argv[1:]), progress=not args.no_progress)
    print(path.read_text())
    return 0
