"""Reproduce MetaBERT's Table II and Fig. 2: every training method on every task and seed, from the
same backbone and budget; every exit's dev score and entropy early exit at fixed layer speed-ups,
with γ chosen on the calibration slice held out of the training data (never on dev).

Each (task, method, seed) cell writes ``DIR/<task>/<method>/seed<k>/result.json``; a cell whose
result exists is not trained again, so an interrupted run resumes. With ``--save-every N`` a cell
cut short mid-training also resumes from its last saved state instead of starting over.
"""

from __future__ import annotations

import datetime
import functools
from importlib import resources
import json
import logging
import statistics
from pathlib import Path

from metabert import (RESUME_FREE, DataError, MultiExitBert, is_static_method, TrainConfig, all_exit_logits, calibration_set, choose, encode,
                      get_task, glue_file, hardware, load_glue, per_exit_scores, pyplot, read_log, simulate, source_num_layers,
                      state_file, train)

log = logging.getLogger(__name__)


@functools.cache
def _paper_data() -> dict:
    """``paper_tables.json`` (shipped with the package), read once per process: every table write
    of a long run asks for it."""
    return json.loads(resources.files("metabert.recipes").joinpath("paper_tables.json").read_text())


def paper_tables() -> dict[str, tuple[str, dict[str, dict[str, float]]]]:
    """The paper's own Table I and II figures, printed under ours: {table: (title, {row: {task: score}})}."""
    return {key: (table["title"], table["rows"]) for key, table in _paper_data()["tables"].items()}


def paper_row_names(paper: str) -> dict[str, str]:
    """Our row name -> the paper's row name, for the rows of ``paper``'s table that we run under
    another name (Table I: ``gaml`` is GAML-BERT, ``bert-3l`` the paper's BERT-6L at half depth)."""
    return dict(_paper_data()["tables"].get(paper, {}).get("rows_here", {}))


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


def is_static(config: dict) -> bool:
    """Whether a row's model has one depth only: truncated to k layers (``num_layers``), or trained on
    its last exit alone (method ``last`` and the static Table I systems), whose other exits are
    untrained heads that no exit rule may use."""
    return is_static_method(config.get("method", "")) or bool(config.get("num_layers"))


def measure(run: dict, key: str) -> float | None:
    """One run's figure for a table key: last_exit, final_epoch_last_exit, mean_over_exits or at_<s>x
    (None where the run has no such figure: a speed-up not reached, a cell made before final_epoch, the
    exits of a static row other than its last, which were never trained)."""
    static = is_static(run.get("config", {}))
    if key == "final_epoch_last_exit":
        return run.get("final_epoch", {}).get("last_exit")
    if key == "mean_over_exits" and static:
        return None
    if key.startswith("at_"):
        entry = run["early_exit"].get(key[3:-1], {})  # "at_1.5x" -> "1.5"
        return None if static and not entry.get("static") else entry.get("score")
    return run[key]


def measure_keys(speedups: list[float]) -> list[str]:
    """The table keys ``measure`` knows, in the order of the tables."""
    return ["last_exit", "final_epoch_last_exit", "mean_over_exits"] + [f"at_{s:g}x" for s in speedups]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; the deviation is None for one value (no spread is known)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def spread(mean: float, std: float | None, signed: bool = False) -> str:
    """``mean ± std`` as the tables print it, or ``mean (one seed)`` where no spread is known."""
    shown = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return f"{shown} (one seed)" if std is None else f"{shown} ± {std:.1f}"


def aggregate(results: list[dict], speedups: list[float]) -> dict:
    table: dict = {}
    for r in results:
        cell = table.setdefault(r["method"], {}).setdefault(r["task"], {"runs": []})
        cell["runs"].append(r)
    for method, tasks in table.items():
        for task, cell in tasks.items():
            runs = cell.pop("runs")
            cell["seeds"] = len(runs)
            for key in measure_keys(speedups):
                values = [v for r in runs if (v := measure(r, key)) is not None]
                cell[key] = mean_std(values) if values else None
                cell[f"{key}_seeds"] = len(values)
            cell["per_exit"] = [statistics.fmean(s) for s in zip(*(r["per_exit"] for r in runs))]
            cell["static"] = all(is_static(r.get("config", {})) for r in runs)
            cell["train_seconds"] = statistics.fmean(r["train_seconds"] for r in runs)
            for s in speedups:  # the layer speed-up reached on dev by the runs that reached the target
                reached = [r["early_exit"][f"{s:g}"]["dev_layer_speedup"] for r in runs
                           if measure(r, f"at_{s:g}x") is not None]
                cell[f"at_{s:g}x_speedup"] = statistics.fmean(reached) if reached else None
    return table


CONTROL = "joint-matched"  # the row every other is compared with seed by seed, where it was run


def paired(results: list[dict], pairs: list[tuple[str, str]], speedups: list[float]) -> dict:
    """Seed-by-seed differences, row minus reference, for each (row, reference) of ``pairs``:
    (row, reference) -> task -> measure -> {"mean", "std", "seeds", "wins", "per_seed"}, in the order
    of ``pairs``, for the pairs with at least one difference. A difference counts only on a seed both
    rows finished (and, at a speed-up, both reached); ``wins`` is how many of those seeds the row
    scored higher; ``per_seed`` lists [seed, difference] in the order of the seeds."""
    by = {(r["task"], r["method"], r["seed"]): r for r in results}
    in_seed_order = sorted(by.items(), key=lambda item: item[0][2])
    out: dict = {}
    for row, reference in pairs:
        for (task, method, seed), r in in_seed_order:
            ref = by.get((task, reference, seed))
            if method != row or ref is None:
                continue
            measures = out.setdefault((row, reference), {}).setdefault(task, {})
            for key in measure_keys(speedups):
                a, b = measure(r, key), measure(ref, key)
                if a is not None and b is not None:
                    measures.setdefault(key, []).append([seed, a - b])
    for tasks in out.values():
        for measures in tasks.values():
            for key, per_seed in measures.items():
                diffs = [d for _, d in per_seed]
                m, sd = mean_std(diffs)
                measures[key] = {"mean": m, "std": sd, "seeds": len(diffs), "wins": sum(d > 0 for d in diffs),
                                 "per_seed": per_seed}
    return out


def render_paired(diffs: dict, tasks: list[str], speedups: list[float], heading: str, intro: str) -> list[str]:
    """A section of seed-by-seed differences: one table per measure, one line per entry of ``diffs``."""
    out = [f"## {heading}", "", intro + " Mean ± standard deviation of the differences (points), on "
           "how many seeds the first row scored higher, and the difference on each seed in the order of the "
           "seeds. A difference smaller than its standard deviation is not a win; nor is anything on one seed.", ""]
    for key, title in [("last_exit", "last exit"), ("final_epoch_last_exit", "last exit after the final epoch"),
                       ("mean_over_exits", "mean over exits")] + [
            (f"at_{s:g}x", f"early exit at {s:g}x") for s in speedups]:
        out += [f"**{title}**", "", "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for method, cells in diffs.items():
            shown = []
            for t in tasks:
                d = cells.get(t, {}).get(key)
                shown.append("n/a" if d is None else
                             f"{spread(d['mean'], d['std'], signed=True)} ({d['wins']}/{d['seeds']} seeds higher: "
                             + ", ".join(f"{v:+.1f}" for _, v in d["per_seed"]) + ")")
            out.append(f"| {method} | " + " | ".join(shown) + " |")
        out.append("")
    return out


def _standing(d: dict | None) -> str:
    """How a seed-by-seed difference stands: ahead or behind by more than its spread, within it, or on
    one seed (no spread known)."""
    if d is None:
        return "n/a"
    if d["std"] is None:
        return "one seed"
    if d["mean"] - d["std"] > 0:
        return "ahead"
    if d["mean"] + d["std"] < 0:
        return "behind"
    return "within the spread"


def ordering(results: list[dict], table: dict, tasks: list[str], speedups: list[float], paper: str) -> dict | None:
    """Whether the paper's ordering holds here: its two best rows among those we run (by the paper's
    own average over ``tasks``) and our best other row (by our average over ``tasks``), compared seed
    by seed at the paper's setting, early exit at 2x (or the largest speed-up asked for; static rows
    at their depth). None where fewer than two of our rows have a paper figure on every task."""
    tables = paper_tables()
    if paper not in tables:
        return None
    names, paper_rows = paper_row_names(paper), tables[paper][1]
    key = f"at_{(2.0 if 2.0 in speedups else max(speedups)):g}x"

    def paper_mean(row):
        values = [paper_rows.get(names.get(row, row), {}).get(t) for t in tasks]
        return statistics.fmean(values) if all(v is not None for v in values) else None

    def here_mean(row):
        values = [table[row].get(t, {}).get(key) for t in tasks]
        return statistics.fmean(v[0] for v in values) if all(values) else None

    # the systems at that setting: the full model (the paper's BERT-base) has no figure at 2x
    at_key = [r for r in table if any(c.get(key) for c in table[r].values())]
    ranked = sorted((r for r in at_key if paper_mean(r) is not None), key=paper_mean, reverse=True)
    if len(ranked) < 2:
        return None
    first, second = ranked[:2]
    here = sorted((r for r in table if here_mean(r) is not None), key=here_mean, reverse=True)
    others = [r for r in here if r not in (first, second)]
    pairs = [(first, second)] + [(row, others[0]) for row in (first, second) if others]
    diffs = paired(results, pairs, speedups)
    comparisons = []
    for row, ref in pairs:
        cells = {t: diffs.get((row, ref), {}).get(t, {}).get(key) for t in tasks}
        standing = {t: _standing(d) for t, d in cells.items()}
        counts = {s: sum(v == s for v in standing.values()) for s in STANDINGS}
        comparisons.append({"row": row, "reference": ref, "tasks": cells, "standing": standing, "counts": counts})
    best = others[0] if others else None
    settled = best and all(c["counts"]["ahead"] > len(tasks) / 2 and not c["counts"]["behind"] for c in comparisons)
    against = [c for c in comparisons if c["counts"]["behind"] > c["counts"]["ahead"]]
    if settled:
        verdict = f"The paper's ordering ({names.get(first, first)}, then {names.get(second, second)}, then the rest) holds here."
    elif against:
        verdict = "The paper's ordering does not hold here: " + "; ".join(
            f"{c['row']} is behind {c['reference']} on more tasks than it is ahead" for c in against) + "."
    else:
        verdict = ("These seeds do not settle the paper's ordering: no comparison is behind on more tasks than it "
                   "is ahead, and not every one is ahead on most tasks.")
    return {"key": key, "paper_title": tables[paper][0], "first": first, "second": second, "best_other": best,
            "paper_mean": {r: paper_mean(r) for r in ranked}, "here_mean": {r: here_mean(r) for r in here},
            "names": {r: names.get(r, r) for r in table}, "comparisons": comparisons, "verdict": verdict}


STANDINGS = ("ahead", "behind", "within the spread", "one seed", "n/a")


def render_ordering(found: dict, tasks: list[str]) -> list[str]:
    """The ordering section: the three comparisons, and a verdict written from their standings."""
    key, names = found["key"], found["names"]
    label = {r: (f"{r} ({names[r]})" if names.get(r, r) != r else r) for r in names}
    first, second, best = found["first"], found["second"], found["best_other"]
    here = found["here_mean"]
    rank = {r: i + 1 for i, r in enumerate(here)}

    def where(row):
        return f"{here[row]:.1f}, rank {rank[row]} of {len(here)}" if row in here else "not on every task yet"

    out = ["## Does the paper's ordering hold here?", "",
           f"Among the rows run here, the paper ranks {label[first]} first and {label[second]} second (its "
           f"{found['paper_title']} average over {', '.join(tasks)}: {found['paper_mean'][first]:.1f} and "
           f"{found['paper_mean'][second]:.1f}). Here, early exit at {key[3:]} (static rows at their depth), "
           f"averaged over the same tasks: {label[first]} {where(first)}; {label[second]} {where(second)}; "
           + (f"the best other row is {label[best]} ({where(best)})." if best else
              "no other row has every task yet.")
           + " Seed by seed (mean ± standard deviation of the differences, seeds): ahead or behind means by "
           "more than the spread.", "",
           "| comparison | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    lines = []
    for c in found["comparisons"]:
        shown = []
        for t in tasks:
            d = c["tasks"][t]
            shown.append("n/a" if d is None else spread(d["mean"], d["std"], signed=True) + (
                "" if d["std"] is None else f" ({d['seeds']} seeds): {c['standing'][t]}"))
        out.append(f"| {c['row']} − {c['reference']} | " + " | ".join(shown) + " |")
        n = c["counts"]
        lines.append(f"{c['row']} against {c['reference']}: ahead on {n['ahead']}, behind on {n['behind']}, within "
                     f"the spread on {n['within the spread']}, one seed only on {n['one seed']}, not yet compared "
                     f"on {n['n/a']} of {len(tasks)} tasks.")
    out += ["", "Verdict, written from the standings above: " + " ".join(lines), found["verdict"]]
    return out + [""]


def render(table: dict, tasks: list[str], speedups: list[float], command: str, variants: dict | None = None,
           diffs: dict | None = None, title: str = "Table II reproduction", paper: str = "table2",
           pair_diffs: dict | None = None, order: dict | None = None, absent: dict[str, str] | None = None) -> str:
    """The Markdown page. ``order``: the ordering section (``ordering``); ``absent``: the paper's tasks
    not run here, each with the reason (``tasks_not_run``)."""
    def fmt(v, speedup=None, seeds=None, total=None):
        if v is None:
            return "n/a"
        text = spread(*v)
        if speedup is not None:  # the layer speed-up reached on dev, and seeds that reached the target
            text += f" ({speedup:.2f}x" + (f", {seeds}/{total} seeds" if seeds != total else "") + ")"
        return text

    out = [f"# {title}", "", f"Generated by `{command}` on {datetime.date.today().isoformat()} ({hardware()}); "
           "each cell's training ran on the machine that made it (the wall times below are not benchmarks). "
           "Mean ± standard deviation over seeds; "
           "dev scores in points; early exit at a layer speed-up with γ chosen on the training slice held "
           "out for calibration (never on dev). Each run keeps the epoch whose last exit scored best on dev "
           "(the usual GLUE recipe), which flatters every row alike; the final-epoch table is free of that "
           "choice.", ""]
    names = paper_row_names(paper)

    def label(method: str) -> str:  # with the paper's name and our depth, where the paper has the row
        if not names:
            return method
        depth = max((len(c["per_exit"]) for c in table.get(method, {}).values()), default=None)
        shown = [names[method]] if method in names else []
        shown += [f"{depth} layers"] if depth else []
        return f"{method} ({'; '.join(shown)})" if shown else method

    for name, overrides in (variants or {}).items():
        out.append(f"- `{name}`" + (f" (the paper's {names[name]})" if name in names else "") + ": "
                   + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    if variants:
        out.append("")
    if absent:
        out += ["Tasks of the paper's table not run here: " + "; ".join(f"{t} ({why})" for t, why in absent.items())
                + ".", ""]
    if any(cell.get("static") for cells in table.values() for cell in cells.values()):
        out += ["A static row (trained on its last exit only, perhaps truncated to k layers) has one depth "
                "and no early exit: its speed-up is the backbone's layers over its own, n/a where that falls "
                "short of the target, and its untrained exits count in no table.", ""]
    for key, title in [("last_exit", "last exit"),
                       ("final_epoch_last_exit", "last exit after the final epoch (the checkpoint not chosen on dev)"),
                       ("mean_over_exits", "mean over all exits (area under Fig. 2)")] + [
            (f"at_{s:g}x", f"early exit at {s:g}x layer speed-up (the row's exit rule, entropy unless it "
                           f"says otherwise; in brackets the speed-up reached on dev)") for s in speedups]:
        out += [f"## {title}", "", "| method | " + " | ".join(tasks) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
        for method, cells in table.items():
            vals = [cells.get(t, {}).get(key) for t in tasks]
            avg = statistics.fmean(v[0] for v in vals) if all(vals) else None
            shown = [fmt(v, cells[t].get(f"{key}_speedup"), cells[t].get(f"{key}_seeds"), cells[t]["seeds"])
                     if t in cells else "n/a" for t, v in zip(tasks, vals)]
            out.append(f"| {label(method)} | " + " | ".join(shown) + f" | {'n/a' if avg is None else f'{avg:.1f}'} |")
        out.append("")
    if diffs:
        out += render_paired(diffs, tasks, speedups, f"Against the matched-compute control `{CONTROL}`, seed by seed",
                             f"Each row minus `{CONTROL}` on the same seed.")
    if pair_diffs:
        out += render_paired(pair_diffs, tasks, speedups, "Pairs asked for (--pair), seed by seed",
                             "Each line is a row minus its reference on the same seed.")
    if order:
        out += render_ordering(order, tasks)
    tables = paper_tables()
    if paper in tables:
        name, rows = tables[paper]
        out += [f"## The paper's {name} (BERT-base, 12 layers; not comparable in absolute terms)", "",
                "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for method, row in rows.items():
            out.append(f"| {method} | " + " | ".join(f"{row[t]:.1f}" if t in row else "n/a" for t in tasks) + " |")
        out.append("")
    out += ["## Seeds finished per cell", "", "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method, cells in table.items():
        out.append(f"| {method} | " + " | ".join(str(cells[t]["seeds"]) if t in cells else "0" for t in tasks) + " |")
    out.append("")
    out += ["## Training wall time per run (mean over seeds)", "", "| method | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks)]
    for method, cells in table.items():
        out.append(f"| {method} | " + " | ".join(
            f"{cells[t]['train_seconds'] / 60:.1f} min" if t in cells else "n/a" for t in tasks) + " |")
    return "\n".join(out) + "\n"


def plot_fig2(table: dict, task: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, cells in table.items():
        if task in cells:
            scores = cells[task]["per_exit"]
            if cells[task].get("static"):  # one depth: only its last exit was trained
                ax.plot([len(scores)], scores[-1:], marker="s", markersize=9, linestyle="none", label=f"{method} (static)")
            else:
                ax.plot(range(1, len(scores) + 1), scores, marker="o", label=method)
    ax.set(xlabel="exit (layer)", ylabel="dev score", title=f"{task}: score of every exit (Fig. 2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def tasks_not_run(paper: str, tasks: list[str], data_dir: str | None) -> dict[str, str]:
    """The tasks of the paper's table missing from ``tasks``, each with why: no training file in the
    GLUE folder, or not asked for."""
    tables = paper_tables()
    if paper not in tables:
        return {}
    wanted = dict.fromkeys(t for row in tables[paper][1].values() for t in row if t not in tasks)
    out = {}
    for task in wanted:
        spec = get_task(task)
        try:
            glue_file(task, "train", data_dir)
            out[task] = "its training file is present; not asked for in --tasks"
        except DataError:
            out[task] = f"no {spec.folder}/{spec.splits['train']} in the GLUE folder"
    return out


def write_tables(results: dict, cells: list[tuple], tasks: list[str], speedups: list[float], command: str,
                 variants: dict, root: Path, title: str, paper: str, pairs: list[tuple[str, str]] = (),
                 absent: dict[str, str] | None = None) -> None:
    finished = [results[c] for c in cells if c in results]
    missing = [c for c in cells if c not in results]
    table = aggregate(finished, speedups)
    order = dict.fromkeys(m for _, m, _ in cells)  # rows in the order of --methods, not of finishing
    table = {m: table[m] for m in order if m in table}
    diffs = {row: d for (row, _), d in paired(finished, [(m, CONTROL) for m in order if m != CONTROL],
                                                speedups).items()}
    pair_diffs = {f"{row} − {ref}": d for (row, ref), d in paired(finished, pairs, speedups).items()}
    order = ordering(finished, table, tasks, speedups, paper) if paper_row_names(paper) else None
    (root / "table2.json").write_text(json.dumps({"rows": table, "control": CONTROL, "minus_control": diffs,
                                                  "pairs": pair_diffs, "ordering": order,
                                                  "tasks_not_run": absent or {}}, indent=2))
    text = render(table, tasks, speedups, command, variants, diffs, title, paper, pair_diffs, order, absent)
    if missing:
        text += (f"\n**Incomplete: {len(finished)} of {len(cells)} cells finished.** Not yet run: "
                 + ", ".join(f"{t}/{m}/seed{k}" for t, m, k in missing) + ".\n")
    (root / "table2.md").write_text(text)
    for task in tasks:
        if any(r["task"] == task for r in finished):
            plot_fig2(table, task, root / f"fig2_{task}.png")
