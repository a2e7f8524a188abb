"""What the cells say together: each cell's figures, means and spreads over seeds, seed-by-seed
differences between rows, and whether the paper's ordering of the rows holds here."""

from __future__ import annotations

import statistics

from metabert import is_static_method
from metabert.recipes.reproduce.paper import paper_row_names, paper_tables


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


