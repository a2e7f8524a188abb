"""``metabert reproduce --tasks cola,rte,mrpc,sst2 --methods joint,two-stage,alternating,meta --seeds 3
--output DIR``: MetaBERT's Table II and Fig. 2 from the same backbone and budget, resumable."""

from __future__ import annotations

from pathlib import Path

from metabert.commands.common import add_training_options, config_fields
from metabert.data.tasks import GLUE_TASKS
from metabert.engine.policies import POLICIES
from metabert.training.methods import entry
from metabert.common.options import flat_types
from metabert.recipes.reproduce.cells import reproduce, split_row
from metabert.training.config import TrainConfig


def add_parser(sub, name):
    p = sub.add_parser(name, help="train and compare methods on several tasks and seeds (Table II)",
                       description=__doc__)
    add_training_options(p)
    # the tables' cells hold out 5% of each training file, as `train` did before it held out more of small
    # files: the recipe keeps that setting so its cells, committed or resumed, stay comparable
    p.set_defaults(calibration_fraction=0.05)
    p.add_argument("--tasks", default="cola,rte,mrpc,sst2")
    p.add_argument("--methods", default="joint,two-stage,alternating,meta")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--task-seeds", default="", metavar="TASK=N,...",
                   help="seeds per task where it differs from --seeds, e.g. sst2=1 (the table says how many each cell has)")
    p.add_argument("--task-epochs", default="", metavar="TASK=N,...",
                   help="epochs per task where it differs from --epochs, e.g. sst2=2,cola=3")
    p.add_argument("--task-learning-rate", default="", metavar="TASK=LR,...",
                   help="learning rate per task where it differs from --learning-rate, e.g. sst2=1e-4 "
                        "(a --variant that sets learning_rate wins)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OPTION=VALUE,...",
                   help="a row that changes options, usable in --methods, e.g. "
                        "meta-adam=method=meta,meta_optimizer=adam,meta_lr=3e-5 (repeatable)")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="another reproduce --output folder: its finished cells made with the same options and "
                        "exit rule (under any row name) are taken instead of training again (repeatable)")
    p.add_argument("--pair", action="append", default=[], metavar="ROW=REFERENCE",
                   help="also compare ROW with REFERENCE seed by seed, both rows of --methods, e.g. "
                        "meta=meta-no-inner for an ablation (repeatable; every row is compared with "
                        "joint-matched anyway where it is run)")
    p.add_argument("--no-train", action="store_true",
                   help="only tabulate the cells already finished (e.g. while a run is going)")
    p.add_argument("--summary", default=None, metavar="DIR",
                   help="where table2.md, table2.json and the fig2 plots go (default: --output); give a run of "
                        "some rows or tasks its own, so that it leaves the full table's files over a shared "
                        "--output as they are")
    p.add_argument("--title", default="Table II reproduction", help="heading of table2.md")
    p.add_argument("--paper", default="table2", choices=["table2", "table1", "none"],
                   help="the paper's table to print under ours")
    p.add_argument("--speedups", default="1.5,2", help="layer speed-ups at which to report early exit")
    p.set_defaults(run=run)


def run(args) -> int:
    if not args.output:
        raise ValueError("--output is required")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    task_options: dict[str, dict] = {}
    for field, text, flag, kind in [("epochs", args.task_epochs, "--task-epochs", int),
                                    ("learning_rate", args.task_learning_rate, "--task-learning-rate", float)]:
        for task, value in parse_per_task(text, tasks, flag, kind).items():
            task_options.setdefault(task, {})[field] = value
    task_seeds = {t: args.seeds for t in tasks} | parse_per_task(args.task_seeds, tasks, "--task-seeds", int)
    variants = dict(parse_variant(v) for v in args.variant)
    pairs = [parse_pair(text, methods) for text in args.pair]
    base = TrainConfig(**{**config_fields(args), "task": tasks[0], "method": "joint"})
    for t in tasks:  # fail before hours of training, not after
        for m in methods:
            options, _ = split_row(variants.get(m))
            config = base.replace(**{"task": t, **task_options.get(t, {}), "method": m, **options})
            row = (variants.get(m) or {}).get("teacher_row")
            if entry(config.method).needs_teacher and not (row or config.teacher):
                raise ValueError(f"row {m} (--method {config.method}) needs a teacher: add teacher_row=ROW to its "
                                 "--variant (a full-depth row earlier in --methods, e.g. bert-6l=method=last)")
            if row is not None and (row not in methods or methods.index(row) > methods.index(m)):
                raise ValueError(f"row {m}: teacher_row {row} must be a row of --methods before it")
    path = reproduce(base, tasks, methods, task_seeds, args.output, [float(s) for s in args.speedups.split(",")],
                     command=args.command_line, progress=args.progress,
                     task_options=task_options, variants={m: variants[m] for m in methods if m in variants},
                     train_missing=not args.no_train, reuse=[Path(d) for d in args.reuse], title=args.title,
                     paper=args.paper, pairs=pairs, summary=args.summary)
    print(path.read_text())
    return 0


def parse_per_task(text: str, tasks: list[str], flag: str, kind: type) -> dict:
    """``TASK=VALUE,...`` (``kind`` int: epochs >= 1; float: a learning rate > 0) for the tasks in ``tasks``."""
    out = {}
    shape = "TASK=N with N >= 1" if kind is int else "TASK=VALUE with VALUE > 0"
    for item in filter(None, (i.strip() for i in text.split(","))):
        task, sep, value = (part.strip() for part in item.partition("="))
        try:
            number = kind(value)
        except ValueError:
            number = None
        if not sep or number is None or not 0 < number < float("inf"):
            raise ValueError(f"{flag}: expected {shape}, got {item!r}")
        if task not in GLUE_TASKS:  # a task outside --tasks is allowed (scripts run subsets)
            raise ValueError(f"{flag}: unknown task {task!r}; choose among {', '.join(GLUE_TASKS)}")
        if task in tasks:
            out[task] = number
    return out


def parse_pair(text: str, methods: list[str]) -> tuple[str, str]:
    """``ROW=REFERENCE``, two different rows of ``methods``."""
    row, sep, ref = (part.strip() for part in text.partition("="))
    if not sep or not row or not ref or row == ref:
        raise ValueError(f"--pair: expected ROW=REFERENCE with two different rows, got {text!r}")
    for name in (row, ref):
        if name not in methods:
            raise ValueError(f"--pair {text}: {name!r} is not a row of --methods ({', '.join(methods)})")
    return row, ref


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=field=value,field=value`` -> (NAME, {field: typed value}); ``method`` is required."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--variant: expected NAME=OPTION=VALUE,..., got {text!r}")
    types = flat_types(TrainConfig)  # the flat option names, meta_* among them
    kinds = {int: int, float: float, str: str, bool: parse_bool}
    out = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key == "teacher_row":  # the row whose same-seed checkpoint is this row's --teacher
            out[key] = value.strip()
            continue
        if key == "policy":  # the row's exit rule, used to reach each speed-up
            if value.strip() not in POLICIES:
                raise ValueError(f"--variant {name}: unknown policy {value.strip()!r}; choose one of: "
                                 f"{', '.join(POLICIES)}")
            out[key] = value.strip()
            continue
        if not sep or key not in types or key in ("task", "output", "seed"):
            raise ValueError(f"--variant {name}: {item!r} is not OPTION=VALUE with a training option "
                             "(e.g. meta_inner_lr=1e-3)")
        kind = kinds.get(types[key])
        if kind is None:
            raise ValueError(f"--variant {name}: {key} cannot be set in a variant")
        try:
            out[key] = kind(value.strip())
        except ValueError:
            raise ValueError(f"--variant {name}: {key} needs {types[key].__name__}, got {value!r}") from None
    if "method" not in out:
        raise ValueError(f"--variant {name}: say which method it varies (method=...)")
    return name.strip(), out


def parse_bool(text: str) -> bool:
    """true/false (also yes/no, 1/0) for a yes-or-no training option in a --variant."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise ValueError(text)
    return value
