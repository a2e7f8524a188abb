"""The paper's own tables (``paper_tables.json``) and which of its tasks this data folder cannot run."""

from __future__ import annotations

import functools
import json
from importlib import resources

from metabert import DataError, get_task, glue_file


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


