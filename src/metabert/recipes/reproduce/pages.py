"""The results page (Markdown) and Fig. 2 plots of a ``reproduce`` run."""

from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path

from metabert import hardware, pyplot
from metabert.recipes.reproduce.paper import paper_row_names, paper_tables
from metabert.recipes.reproduce.stats import (
    CONTROL,
    aggregate,
    ordering,
    paired,
    spread,
)


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
