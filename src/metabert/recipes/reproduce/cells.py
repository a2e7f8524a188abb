"""Reproduce MetaBERT's Table II and Fig. 2: every training method on every task and seed, from the
same backbone and budget; every exit's dev score and entropy early exit at fixed layer speed-ups,
with γ chosen on the calibration slice held out of the training data (never on dev).

Each (task, method, seed) cell writes ``DIR/<task>/<method>/seed<k>/result.json``; a cell whose
result exists is not trained again, so an interrupted run resumes. With ``--save-every N`` a cell
cut short mid-training also resumes from its last saved state instead of starting over.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from metabert import (
    RESUME_FREE,
    MultiExitBert,
    TrainConfig,
    all_exit_logits,
    calibration_set,
    choose,
    encode,
    get_task,
    load_glue,
    per_exit_scores,
    read_log,
    simulate,
    source_num_layers,
    state_file,
    train,
)
from metabert.recipes.reproduce.pages import write_tables
from metabert.recipes.reproduce.paper import tasks_not_run
from metabert.recipes.reproduce.stats import is_static

log = logging.getLogger(__name__)


def split_row(overrides: dict | None) -> tuple[dict, str]:
    """A row's options -> (TrainConfig overrides, its exit rule: ``policy``, entropy by default). The
    row's ``teacher_row`` (``teacher_row_of``) is not a training option either and is left out."""
    options = dict(overrides or {})
    options.pop("teacher_row", None)
    return options, options.pop("policy", "entropy")


def teacher_row_of(overrides: dict | None) -> str | None:
    """The row whose checkpoint of the same task and seed is this row's ``--teacher`` (the static
    Table I systems: ``distilbert=method=distilbert,teacher_row=bert-6l``), or None."""
    return (overrides or {}).get("teacher_row")


def find_teacher(root: Path, task: str, row: str, seed: int, reuse: list[Path] = ()) -> Path | None:
    """The checkpoint of row ``row``'s finished cell (task, seed) in ``root`` (or a ``reuse`` folder), or None."""
    for folder in (root, *reuse):
        result = Path(folder) / task / row / f"seed{seed}" / "result.json"
        if not result.is_file():
            continue
        done = json.loads(result.read_text())
        for checkpoint in (Path(done.get("trained_by") or done["config"]["output"]), result.parent / "checkpoint"):
            if (checkpoint / "metabert_config.json").is_file():
                return checkpoint
    return None


def _changed(wanted: dict, done: dict, task: str) -> list[str]:
    """The options (and exit rule) in which a finished cell ``done`` differs from ``wanted``."""
    stored = {**done["config"], "policy": done.get("policy", "entropy"), "teacher_row": done.get("teacher_row")}
    free = (*RESUME_FREE, "data_dir", "output", "teacher")  # where files are read from and written to may move
    # an option added after the cell was made counts as its default (what the cell ran with)
    defaults = TrainConfig(task=task, output="").to_dict()
    return sorted(k for k in wanted if k not in free and wanted[k] != stored.get(k, defaults.get(k)))


def run_cell(base: TrainConfig, task: str, method: str, seed: int, root: Path, speedups: list[float],
             progress: bool = False, task_options: dict | None = None, overrides: dict | None = None,
             train_missing: bool = True, reuse: list[Path] = ()) -> dict | None:
    """One (task, method, seed) cell. ``method`` names a row of the table: a training method, or a
    variant whose ``overrides`` (TrainConfig fields, ``method`` among them) change the base options.
    ``task_options`` (e.g. this task's epochs or learning rate) apply before the row's overrides.
    A cell of another results folder in ``reuse`` made with the same options and exit rule, under
    any row name, is taken instead of training (its result is copied, naming where it came from). A
    finished cell of this folder or of ``reuse`` trained with the same options under another exit rule
    lends its checkpoint: this row's rule is calibrated and evaluated on that model, and nothing is
    trained (the result names it in ``trained_by``)."""
    cell = root / task / method / f"seed{seed}"
    result_file = cell / "result.json"
    teacher_row = teacher_row_of(overrides)
    overrides, policy = split_row(overrides)  # the row's exit rule (PABEE: patience, ...) is not a training option
    if teacher_row is not None:  # the same task and seed's checkpoint of that row (trained first, --methods order)
        teacher = find_teacher(root, task, teacher_row, seed, reuse)
        if teacher is None and train_missing and not result_file.exists():
            raise ValueError(f"row {method} learns from row {teacher_row}'s {task} seed {seed}, which has not "
                             f"finished: put {teacher_row} before {method} in --methods")
        overrides = {**overrides, "teacher": str(teacher) if teacher else None}
    config = base.replace(task=task, seed=seed, output=str(cell / "checkpoint"),
                              **{**(task_options or {}), "method": method, **overrides})
    wanted = {**config.to_dict(), "policy": policy, "teacher_row": teacher_row}
    if result_file.exists():
        done = json.loads(result_file.read_text())
        if changed := _changed(wanted, done, task):
            raise ValueError(f"{result_file} was made with other options ({', '.join(changed)}); "
                             "remove that cell or use another --output")
        if "final_epoch" not in done and (cell / "checkpoint" / "log.jsonl").exists():  # a cell made before it
            done["final_epoch"] = final_epoch(read_log(cell / "checkpoint"))
            result_file.write_text(json.dumps(done, indent=2))
        return done
    for other in sorted(p for folder in reuse for p in Path(folder).glob(f"{task}/*/seed{seed}/result.json")):
        done = json.loads(other.read_text())
        if not _changed(wanted, done, task) and all(f"{s:g}" in done["early_exit"] for s in speedups):
            done = {**done, "method": method, "reused_from": str(other.parent)}
            cell.mkdir(parents=True, exist_ok=True)
            result_file.write_text(json.dumps(done, indent=2))
            log.info("%s: reused %s (same options)", cell, other.parent)
            return done
    trained_by, done = _trained_alike(wanted, task, seed, cell, [root, *reuse])
    if trained_by is None and not train_missing:
        return None
    if trained_by is not None:  # the same training, another exit rule: evaluate that model, train nothing
        log.info("%s: evaluating the model trained for %s (same training options, another exit rule)",
                 cell, trained_by.parent)
        resumed, train_examples = False, done["train_examples"]
    else:
        resumed = state_file(Path(config.output)).is_file()  # cut short after a --save-every save
        if resumed:
            log.info("%s: resuming the interrupted training from its saved state", cell)
        train_examples = train(config, progress=progress, resume=resumed)["train_examples"]
    model_dir = trained_by or Path(config.output)
    model = MultiExitBert.from_pretrained(model_dir)
    spec = get_task(task)
    dev = encode(load_glue(task, "dev", base.data_dir), model.tokenizer, base.max_seq_length)
    logits = all_exit_logits(model, dev, base.eval_batch_size)
    per_exit = per_exit_scores(logits, dev.labels, spec.metric)
    held, what = calibration_set(model, base.data_dir)
    held_enc = encode(held, model.tokenizer, base.max_seq_length)
    held_logits = all_exit_logits(model, held_enc, base.eval_batch_size)
    scores = [e["score"] for e in per_exit]
    records = read_log(model_dir)
    early = {}
    static = source_num_layers(config.model) / model.num_layers if is_static(config.to_dict()) else None
    for s in speedups:
        if static is not None:  # a static model has one speed-up: its layers against the backbone's
            early[f"{s:g}"] = ({"score": scores[-1], "dev_layer_speedup": static, "static": True}
                               if static >= s - 1e-9 else {"error": f"static model: {static:.2f}x < {s:g}x"})
            continue
        try:
            choice = choose(held_logits, held_enc.labels, spec.metric, policy=policy, target_speedup=s)
        except ValueError as err:  # this speed-up is out of reach on the calibration slice
            early[f"{s:g}"] = {"error": str(err)}
            continue
        result = simulate(logits, dev.labels, spec.metric, choice["policy"])
        early[f"{s:g}"] = {"threshold": choice["policy"].threshold, "patience": choice["policy"].patience,
                           "score": result.score, "dev_layer_speedup": result.layer_speedup,
                           "calibration_layer_speedup": choice["result"].layer_speedup}
    out = {"task": task, "method": method, "seed": seed, "metric": spec.metric, "policy": policy, "per_exit": scores,
           "last_exit": scores[-1], "mean_over_exits": sum(scores) / len(scores), "early_exit": early,
           "calibrated_on": what, "train_seconds": sum(r["train_seconds"] for r in records),
           "final_epoch": final_epoch(records), "resumed": resumed,
           "epochs": config.epochs, "train_examples": train_examples, "config": config.to_dict()}
    if teacher_row is not None:
        out["teacher_row"] = teacher_row
    if trained_by is not None:
        out["trained_by"] = str(trained_by)
        cell.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(out, indent=2))
    return out


def _trained_alike(wanted: dict, task: str, seed: int, cell: Path, folders: list[Path]) -> tuple[Path | None, dict]:
    """A finished cell of ``folders`` whose training options equal ``wanted``'s but whose exit rule
    differs, and whose checkpoint is still there: (its checkpoint folder, its result), else (None, {})."""
    for other in sorted({p for folder in folders for p in Path(folder).glob(f"{task}/*/seed{seed}/result.json")}):
        if other.parent == cell:
            continue
        done = json.loads(other.read_text())
        if _changed({**wanted, "policy": done.get("policy", "entropy")}, done, task):
            continue
        for checkpoint in (Path(done.get("trained_by") or done["config"]["output"]), other.parent / "checkpoint"):
            if (checkpoint / "metabert_config.json").is_file():
                return checkpoint, done
    return None, {}


def final_epoch(records: list[dict]) -> dict:
    """The dev scores after the last epoch, whichever epoch was kept: a figure no choice on dev touched."""
    last = records[-1]
    return {"epoch": last["epoch"], "last_exit": last["dev_last_exit"], "mean_over_exits": last["dev_mean_over_exits"]}


def reproduce(base: TrainConfig, tasks: list[str], methods: list[str], seeds: int | dict[str, int], root: str | Path,
              speedups: list[float], command: str, progress: bool = False,
              task_options: dict[str, dict] | None = None, variants: dict[str, dict] | None = None,
              train_missing: bool = True, reuse: list[Path] = (), title: str = "Table II reproduction",
              paper: str = "table2", pairs: list[tuple[str, str]] = (), summary: str | Path | None = None) -> Path:
    """``seeds``: seeds 0..N-1 of every task, or task -> N.
    ``task_options``: task -> TrainConfig overrides for that task (epochs, learning rate).
    ``variants``: row name -> TrainConfig overrides (with ``method``), for rows that are not a
    plain method with the base options (e.g. MetaBERT with other meta options); they win over the
    task's options. ``reuse``: other results folders whose cells with the same options stand in for
    training (see ``run_cell``). ``pairs``: (row, reference) pairs compared seed by seed besides the
    control (e.g. an ablation: ``("meta", "meta-no-inner")``). The tables are
    rewritten after every cell, so a long run can be read while it goes; ``train_missing=False``
    only tabulates the cells already finished. ``summary``: the folder of table2.{md,json} and the
    fig2 plots (default ``root``), so that a run of some rows or tasks over a shared ``root`` does not
    overwrite the full table's files."""
    variants, task_options = variants or {}, task_options or {}
    root = Path(root)
    out = Path(summary) if summary is not None else root
    for folder in (root, out):
        folder.mkdir(parents=True, exist_ok=True)
    # seed by seed within a task, so that a run cut short leaves every method compared on the same seeds
    per_task = seeds if isinstance(seeds, dict) else dict.fromkeys(tasks, seeds)
    cells = [(t, m, k) for t in tasks for k in range(per_task[t]) for m in methods]
    results: dict[tuple, dict] = {}
    for task, method, seed in cells:  # finished cells first, so the tables show them from the start
        done = run_cell(base, task, method, seed, root, speedups, progress, task_options.get(task),
                        variants.get(method), train_missing=False, reuse=reuse)
        if done is not None:
            results[task, method, seed] = done
    absent = tasks_not_run(paper, tasks, base.data_dir)
    write_tables(results, cells, tasks, speedups, command, variants, out, title, paper, pairs, absent)
    for i, (task, method, seed) in enumerate(cells):
        if (task, method, seed) in results or not train_missing:
            continue
        log.info("cell %d/%d: %s / %s / seed %d", i + 1, len(cells), task, method, seed)
        results[task, method, seed] = run_cell(base, task, method, seed, root, speedups, progress,
                                               task_options.get(task), variants.get(method), reuse=reuse)
        write_tables(results, cells, tasks, speedups, command, variants, out, title, paper, pairs, absent)
    return out / "table2.md"


