"""Readers for GLUE tasks in their original TSV layout, and for a user's own TSV/CSV/JSONL file.

Nothing is dropped: a row that cannot be read stops the run with an error naming the file and line.
GLUE files are read with ``csv.QUOTE_NONE`` (their sentences contain unbalanced quotes).
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

GLUE_HINT = (
    "Put the GLUE files in the original layout (e.g. DIR/SST-2/train.tsv, DIR/MRPC/dev.tsv) and pass "
    "--data-dir DIR or set GLUE_DIR=DIR; if you are online, `metabert download-glue DIR` fetches them."
)


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclass(frozen=True)
class TaskSpec:
    """How to read one classification task.

    text_columns: one column (single sentence) or two (a pair); names for files with a header,
      integer positions for files without one (CoLA) or where GLUE headers are unreliable.
    label_column: the label's column (name or position; -1 = last).
    labels: the label set in class order; empty for a custom task (inferred from training data).
    splits: split name -> file name inside the task folder.
    header: whether the first line is a header.
    num_columns: expected columns per row (None: as many as the header).
    metric: GLUE metric name, see ``metabert.data.metrics``.
    """

    name: str
    folder: str
    text_columns: tuple
    label_column: object
    labels: tuple = ()
    splits: dict = field(default_factory=lambda: {"train": "train.tsv", "dev": "dev.tsv"})
    header: bool = True
    num_columns: int | None = None
    metric: str = "accuracy"
    format: str = "tsv"


GLUE_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", (0,), 1, ("0", "1"), num_columns=2),
    "mrpc": TaskSpec("mrpc", "MRPC", (3, 4), 0, ("0", "1"), num_columns=5, metric="acc_and_f1"),
    "rte": TaskSpec("rte", "RTE", (1, 2), 3, ("entailment", "not_entailment"), num_columns=4),
    "cola": TaskSpec("cola", "CoLA", (3,), 1, ("0", "1"), header=False, num_columns=4, metric="mcc"),
    "qnli": TaskSpec("qnli", "QNLI", (1, 2), 3, ("entailment", "not_entailment"), num_columns=4),
    "mnli": TaskSpec(
        "mnli", "MNLI", (8, 9), -1, ("contradiction", "entailment", "neutral"),
        splits={"train": "train.tsv", "dev": "dev_matched.tsv"},
    ),
    "mnli-mm": TaskSpec(
        "mnli-mm", "MNLI", (8, 9), -1, ("contradiction", "entailment", "neutral"),
        splits={"train": "train.tsv", "dev": "dev_mismatched.tsv"},
    ),
    "qqp": TaskSpec("qqp", "QQP", (3, 4), 5, ("0", "1"), num_columns=6, metric="acc_and_f1"),
}
TASK_NAMES = (*GLUE_TASKS, "custom")


@dataclass
class Example:
    text: str
    text_pair: str | None
    label: int


@dataclass
class Dataset:
    examples: list[Example]
    label_names: tuple[str, ...]
    source: str  # file it came from

    def __len__(self) -> int:
        return len(self.examples)


def glue_dir(data_dir: str | None) -> Path:
    """The GLUE root: --data-dir, else $GLUE_DIR; an error saying where to put files otherwise."""
    chosen = data_dir or os.environ.get("GLUE_DIR")
    if not chosen:
        raise DataError(f"No GLUE folder given. {GLUE_HINT}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"GLUE folder {path} does not exist. {GLUE_HINT}")
    return path


def glue_file(task: str, split: str, data_dir: str | None) -> Path:
    spec = get_task(task)
    if split not in spec.splits:
        raise DataError(f"task {task} has no split {split!r} (has: {', '.join(spec.splits)})")
    path = glue_dir(data_dir) / spec.folder / spec.splits[split]
    if not path.is_file():
        raise DataError(f"{path}: file not found. {GLUE_HINT}")
    return path


def get_task(name: str) -> TaskSpec:
    try:
        return GLUE_TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}") from None


def load_glue(task: str, split: str, data_dir: str | None = None) -> Dataset:
    """Read ``split`` ("train" or "dev") of a GLUE task from the original TSV layout."""
    spec = get_task(task)
    return read_file(glue_file(task, split, data_dir), spec)


# ---------------------------------------------------------------------------------- low level
def _decoded_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 file (a leading BOM removed); a non-UTF-8 line names its line number."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield line


def iter_rows(path: Path, fmt: str) -> Iterator[tuple[int, list | dict]]:
    """(line number, row) pairs: lists for TSV/CSV, dicts for JSONL. Blank lines are errors too."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt == "jsonl":
        for number, line in enumerate(_decoded_lines(path), start=1):
            if not line.strip():
                raise DataError(f"{path}:{number}: empty line")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row
        return
    if fmt == "tsv":
        reader = csv.reader(_decoded_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    elif fmt == "csv":
        reader = csv.reader(_decoded_lines(path))
    else:
        raise DataError(f"{path}: unknown format {fmt!r} (tsv, csv or jsonl)")
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: {err}") from None


def _column_index(path: Path, header: list[str] | None, column, what: str) -> int:
    if isinstance(column, int):
        return column
    if header is None:
        raise DataError(f"{path}: {what} column {column!r} given by name but the file has no header")
    if column not in header:
        raise DataError(f"{path}:1: no {what} column {column!r} in header {header}")
    return header.index(column)


def read_rows(path: Path, spec: TaskSpec) -> Iterator[tuple[int, str, str | None, str]]:
    """(line, text, text_pair, raw label) for every data row, checked for shape and empty text."""
    path = Path(path)
    rows = iter_rows(path, spec.format)
    if spec.format == "jsonl":
        for number, row in rows:
            values = []
            for column in (*spec.text_columns, spec.label_column):
                if column not in row:
                    raise DataError(f"{path}:{number}: missing field {column!r}")
                values.append(row[column])
            yield _checked(path, number, spec, values)
        return
    header = None
    expected = spec.num_columns
    if spec.header:
        try:
            _, header = next(rows)
        except StopIteration:
            raise DataError(f"{path}: empty file (expected a header line)") from None
        expected = expected or len(header)
    text_idx = [_column_index(path, header, c, "text") for c in spec.text_columns]
    label_idx = _column_index(path, header, spec.label_column, "label")
    for number, row in rows:
        if expected is not None and len(row) != expected:
            raise DataError(f"{path}:{number}: expected {expected} columns, found {len(row)}")
        try:
            values = [row[i] for i in (*text_idx, label_idx)]
        except IndexError:
            raise DataError(f"{path}:{number}: too few columns ({len(row)})") from None
        yield _checked(path, number, spec, values)


def _checked(path, number, spec, values):
    texts, label = values[:-1], values[-1]
    for column, text in zip(spec.text_columns, texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{number}: empty text in column {column!r}")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(f"{path}:{number}: label must be a string or integer, got {label!r}")
    label = str(label).strip()
    if not label:
        raise DataError(f"{path}:{number}: empty label")
    return number, texts[0], (texts[1] if len(texts) > 1 else None), label


def read_file(path: Path, spec: TaskSpec, label_names: tuple[str, ...] | None = None) -> Dataset:
    """Read a whole file; labels must belong to ``label_names`` (default: the task's label set)."""
    names = tuple(label_names or spec.labels)
    index = {name: i for i, name in enumerate(names)}
    examples = []
    for number, text, pair, label in read_rows(path, spec):
        if label not in index:
            raise DataError(f"{path}:{number}: unknown label {label!r} (expected one of {list(names)})")
        examples.append(Example(text, pair, index[label]))
    if not examples:
        raise DataError(f"{path}: no examples")
    return Dataset(examples, names, str(path))


# -------------------------------------------------------------------------------- custom data
def custom_spec(path: str | Path, text_columns: list[str], label_column: str, fmt: str | None = None) -> TaskSpec:
    """A task for a user's file; the format comes from the extension unless given."""
    path = Path(path)
    fmt = fmt or file_format(path)
    if not 1 <= len(text_columns) <= 2:
        raise DataError(f"--text-columns takes one or two column names, got {text_columns}")
    return TaskSpec("custom", "", tuple(text_columns), label_column, header=True, format=fmt)


TEXT_COLUMN_NAMES = (("sentence1", "sentence2"), ("text",), ("sentence",))  # first match wins
LABEL_COLUMN_NAMES = ("label",)


def file_format(path: str | Path) -> str:
    path = Path(path)
    fmt = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the extension; pass --format tsv|csv|jsonl")
    return fmt


def detect_columns(path: str | Path, text_columns=(), label_column: str | None = None) -> tuple[tuple[str, ...], str]:
    """The text and label columns of a user's file, found by name in its header (TSV/CSV) or first
    object (JSONL) where not given: ``sentence1`` + ``sentence2`` (a pair), else ``text``, else
    ``sentence``; ``label``. Names match case-insensitively and are returned as the file spells
    them. A header without one is an error naming the file, the columns found and the flag."""
    path = Path(path)
    try:
        _, first = next(iter_rows(path, file_format(path)))
    except StopIteration:
        raise DataError(f"{path}: empty file (expected a header line)") from None
    columns = list(first) if isinstance(first, dict) else first
    by_lower = {str(c).strip().lower(): c for c in columns}
    texts = tuple(text_columns)
    if not texts:
        found = next((names for names in TEXT_COLUMN_NAMES if all(n in by_lower for n in names)), None)
        if found is None:
            raise DataError(f"{path}:1: no text column found among the columns {columns}; name one 'text' or "
                            "'sentence' (or two 'sentence1' and 'sentence2'), or pass --text-columns NAME[,NAME]")
        texts = tuple(by_lower[n] for n in found)
    label = label_column
    if label is None:
        found = next((n for n in LABEL_COLUMN_NAMES if n in by_lower), None)
        if found is None:
            raise DataError(f"{path}:1: no label column found among the columns {columns}; name it 'label' or "
                            "pass --label-column NAME")
        label = by_lower[found]
    return texts, label


def for_file(spec: TaskSpec, path: str | Path) -> TaskSpec:
    """The same custom task read from another file (its format from that file's extension)."""
    fmt = custom_spec(path, list(spec.text_columns), spec.label_column).format
    return TaskSpec(**{**asdict(spec), "format": fmt})


def label_order(labels) -> list[str]:
    """A stable class order that does not depend on the rows' order: numerically when every label
    is an integer (so "10" comes after "2"), else alphabetically."""
    labels = set(labels)
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def infer_labels(path: Path, spec: TaskSpec) -> tuple[str, ...]:
    """The labels of a training file in ``label_order`` (stored in the checkpoint as its label
    names: class i is the i-th, and ``predict`` writes these names)."""
    labels = label_order(label for *_, label in read_rows(path, spec))
    if len(labels) < 2:
        raise DataError(f"{path}: found {len(labels)} distinct label(s) {labels}; need at least 2")
    return tuple(labels)


def spec_to_dict(spec: TaskSpec) -> dict:
    return asdict(spec)


def spec_from_dict(data: dict) -> TaskSpec:
    data = dict(data)
    data["text_columns"] = tuple(data["text_columns"])
    data["labels"] = tuple(data.get("labels", ()))
    return TaskSpec(**data)


def split_off(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset, list[int]]:
    """A seeded held-out slice (e.g. for calibration): returns (rest, held_out, held-out indices)."""
    count = int(round(len(dataset) * fraction))
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:count])
    held_set = set(held)
    rest = [ex for i, ex in enumerate(dataset.examples) if i not in held_set]
    return (
        Dataset(rest, dataset.label_names, dataset.source),
        Dataset([dataset.examples[i] for i in held], dataset.label_names, dataset.source),
        held,
    )


def subsample(dataset: Dataset, count: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``count`` examples (all of them when count is None or larger)."""
    if count is None or count >= len(dataset):
        return dataset
    order = sorted(random.Random(seed).sample(range(len(dataset)), count))
    return Dataset([dataset.examples[i] for i in order], dataset.label_names, dataset.source)
