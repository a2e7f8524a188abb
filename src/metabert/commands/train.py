"""``metabert train``: fine-tune a multi-exit classifier and keep the best checkpoint."""

from __future__ import annotations

import json
from dataclasses import fields

from metabert.commands.common import add_data_options
from metabert.meta import ADAPT, OPTIMIZERS, SCHEDULES, TASKS
from metabert.methods import METHODS
from metabert.modeling import HEAD_INITS, HEADS, POOLINGS
from metabert.training import SELECT_BY, TrainConfig, resume_config, train


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a multi-exit classifier", description=__doc__)
    add_data_options(p, task_required=False)
    add_training_options(p)
    p.add_argument("--method", default="joint", choices=sorted(METHODS), help="training method")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted run whose --output was DIR, with its options")
    p.set_defaults(run=run)


def add_training_options(p) -> None:
    """Every option of a training run but the task and method (shared with ``reproduce``)."""
    if not any(a.dest == "data_dir" for a in p._actions):
        add_data_options(p, task_required=False)
    p.add_argument("--train-file", help="--task custom: training file (TSV, CSV or JSONL)")
    p.add_argument("--text-columns", help="--task custom: one or two comma-separated text columns")
    p.add_argument("--label-column", help="--task custom: label column")
    p.add_argument("--model", default="minilm-l6", help="minilm-l6 (default), tiny, a local folder or a hub name")
    p.add_argument("--output", help="output folder")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", "--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps for linear warm-up")
    p.add_argument("--max-train-samples", type=int, help="train on a seeded random subset of this size")
    p.add_argument("--calibration-fraction", type=float, default=0.05,
                   help="seeded slice of the training file held out for threshold calibration")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--pooling", default="mean", choices=POOLINGS, help="how each exit reads its layer")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout in the exit heads")
    p.add_argument("--head", default="pooler", choices=HEADS, help="exit classifier: pooler (DeeBERT) or linear")
    p.add_argument("--head-init", default="random", choices=HEAD_INITS,
                   help="exit dense layers: random, or the backbone's pretrained pooler (DeeBERT)")
    p.add_argument("--backbone-dropout", type=float, help="replace the encoder's dropout (default: its own)")
    p.add_argument("--num-layers", type=int, help="keep only the first k layers (static BERT-kL baseline)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--bucket-pool", type=int, default=50,
                   help="batches per length-sorted pool when bucketing by length (1: random batches)")
    p.add_argument("--select-by", default="last", choices=SELECT_BY,
                   help="keep the epoch with the best last exit, or best mean over exits")
    meta = p.add_argument_group("--method meta (MetaBERT's Algorithm 1; see metabert.meta)")
    d = {f.name: f.default for f in fields(TrainConfig)}  # one source of truth for the defaults
    meta.add_argument("--meta-inner-lr", type=float, default=d["meta_inner_lr"],
                      help="α, inner SGD step (Eq. 2); 0: the ablation without an inner step")
    meta.add_argument("--meta-lr", type=float, default=d["meta_lr"], help="β, meta step (Eq. 4)")
    meta.add_argument("--meta-optimizer", choices=OPTIMIZERS, default=d["meta_optimizer"],
                      help="meta step: plain SGD θ - βg (Eq. 4) or Adam with rate β (MAML's meta-optimiser)")
    meta.add_argument("--meta-inner-steps", type=int, default=d["meta_inner_steps"])
    meta.add_argument("--meta-support-size", type=int, default=d["meta_support_size"],
                      help="K: examples per support (and query) batch")
    meta.add_argument("--meta-batch", type=int, default=d["meta_batch"], help="tasks per meta-update")
    meta.add_argument("--meta-order", choices=["first", "second"], default=d["meta_order"])
    meta.add_argument("--meta-adapt", choices=ADAPT, default=d["meta_adapt"], help="what the inner loop adapts")
    meta.add_argument("--meta-task", choices=TASKS, default=d["meta_task"])
    meta.add_argument("--meta-schedule", choices=SCHEDULES, default=d["meta_schedule"])
    meta.add_argument("--meta-warmstart-epochs", type=int, default=d["meta_warmstart_epochs"])
    meta.add_argument("--meta-share-gradients", action="store_true",
                      help="first order: the inner step and the Adam step share the gradients at θ "
                           "(a meta-update costs one pass over the query rows, not two over the task rows)")
    meta.add_argument("--meta-diagnose-every", type=int, default=d["meta_diagnose_every"],
                      help="steps between checks of the meta-gradient against the plain gradient (0: never)")
    p.add_argument("--save-every", type=int, default=0,
                   help="save the resumable training state every N steps (and after each epoch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.resume:
        config = resume_config(args.resume)
        summary = train(config, progress=not args.no_progress, resume=True)
        return report(summary)
    if not args.task or not args.output:
        raise ValueError("--task and --output are required (or --resume DIR)")
    config = TrainConfig(**config_fields(args))
    return report(train(config, progress=not args.no_progress))


def config_fields(args) -> dict:
    return dict(
        task=args.task, output=args.output, model=args.model, method=getattr(args, "method", "joint"),
        data_dir=args.data_dir, train_file=args.train_file, dev_file=args.dev_file,
        text_columns=tuple(c.strip() for c in (args.text_columns or "").split(",") if c.strip()),
        label_column=args.label_column, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, warmup=args.warmup,
        max_seq_length=args.max_seq_length, max_train_samples=args.max_train_samples,
        calibration_fraction=args.calibration_fraction, seed=args.seed, grad_clip=args.grad_clip,
        pooling=args.pooling, dropout=args.dropout, eval_batch_size=args.eval_batch_size, select_by=args.select_by,
        save_every=args.save_every, backbone_dropout=args.backbone_dropout, num_layers=args.num_layers,
        head=args.head, head_init=args.head_init, bucket_pool=args.bucket_pool,
        meta_inner_lr=args.meta_inner_lr, meta_lr=args.meta_lr, meta_inner_steps=args.meta_inner_steps,
        meta_support_size=args.meta_support_size, meta_batch=args.meta_batch, meta_order=args.meta_order,
        meta_adapt=args.meta_adapt, meta_task=args.meta_task, meta_schedule=args.meta_schedule,
        meta_warmstart_epochs=args.meta_warmstart_epochs, meta_optimizer=args.meta_optimizer,
        meta_diagnose_every=args.meta_diagnose_every, meta_share_gradients=args.meta_share_gradients,
    )


def report(summary: dict) -> int:
    if summary.get("rank"):  # a worker process of a distributed run: the main one reports
        return 0
    best = summary["best"]
    print(f"best epoch {best['epoch']}: dev per exit "
          + " ".join(f"{e['score']:.2f}" for e in best["dev_per_exit"])
          + f"; {summary['train_examples']} training examples, {summary['seconds']:.0f}s")
    print(f"checkpoint: {summary['output']} (log: {summary['log']})")
    print(json.dumps({"output": summary["output"], "seconds": round(summary["seconds"], 1)}))
    return 0
