"""Readers for GLUE tasks in their original TSV layout, and for a user's own TSV/CSV/JSONL file.

Nothing is dropped: a row that cannot be read stops the run with an error naming the file and line.
GLUE files are read with ``csv.QUOTE_NONE`` (their sentences contain unbalanced quotes).
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from metabert.data import files
from metabert.data.files import DataError, Replayed, Row, file_format, first_row, read_table

GLUE_HINT = (
    "Put the GLUE files in the original layout (e.g. DIR/SST-2/train.tsv, DIR/MRPC/dev.tsv) and pass "
    "--data-dir DIR or set GLUE_DIR=DIR; if you are online, `metabert download-glue DIR` fetches them."
)


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
    text_names: tuple = ()


GLUE_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", (0,), 1, ("0", "1"), num_columns=2, text_names=("sentence",)),
    "mrpc": TaskSpec("mrpc", "MRPC", (3, 4), 0, ("0", "1"), num_columns=5, metric="acc_and_f1",
                     text_names=("#1 String", "#2 String")),
    "rte": TaskSpec("rte", "RTE", (1, 2), 3, ("entailment", "not_entailment"), num_columns=4,
                    text_names=("sentence1", "sentence2")),
    "cola": TaskSpec("cola", "CoLA", (3,), 1, ("0", "1"), header=False, num_columns=4, metric="mcc",
                     text_names=("sentence",)),
    "qnli": TaskSpec("qnli", "QNLI", (1, 2), 3, ("entailment", "not_entailment"), num_columns=4,
                     text_names=("question", "sentence")),
    "mnli": TaskSpec(
        "mnli", "MNLI", (8, 9), -1, ("contradiction", "entailment", "neutral"),
        splits={"train": "train.tsv", "dev": "dev_matched.tsv"}, text_names=("sentence1", "sentence2"),
    ),
    "mnli-mm": TaskSpec(
        "mnli-mm", "MNLI", (8, 9), -1, ("contradiction", "entailment", "neutral"),
        splits={"train": "train.tsv", "dev": "dev_mismatched.tsv"}, text_names=("sentence1", "sentence2"),
    ),
    "qqp": TaskSpec("qqp", "QQP", (3, 4), 5, ("0", "1"), num_columns=6, metric="acc_and_f1",
                    text_names=("question1", "question2")),
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


# ------------------------------------------------------------------------------ labelled rows
def read_rows(path: Path, spec: TaskSpec) -> Iterator[tuple[int, str, str | None, str]]:
    """(line, text, text_pair, raw label) for every data row of a task's file (``files.read_table``),
    checked for empty texts and labels."""
    columns = (*spec.text_columns, spec.label_column)
    roles = ("text",) * len(spec.text_columns) + ("label",)
    for row in read_table(path, spec.format, columns, header=spec.header, num_columns=spec.num_columns,
                          roles=roles):
        yield _checked(path, row.line, spec, row.values)


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


def label_index(names: tuple[str, ...]) -> dict[str, int]:
    """Label value -> class index for classes ``names``: each name, and where the names are not numbers
    themselves, each index written as a number ("0", "1", ...), so that a file labelled 0/1 reads into
    a classifier whose classes are named (a fine-tuned model's ``id2label``: NEGATIVE, POSITIVE)."""
    index = {name: i for i, name in enumerate(names)}
    if not any(name.lstrip("-").isdigit() for name in names):
        index.update({str(i): i for i in range(len(names))})
    return index


def read_file(path: Path, spec: TaskSpec, label_names: tuple[str, ...] | None = None) -> Dataset:
    """Read a whole file; labels must belong to ``label_names`` (default: the task's label set), by
    name or index (``label_index``)."""
    names = tuple(label_names or spec.labels)
    index = label_index(names)
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
    fmt = file_format(path, fmt)
    if fmt == "txt":
        raise DataError(f"{path}: a text file (one text per line) holds no labels; give a TSV, CSV or JSONL "
                        "file with a label column (or pass --format)")
    if not 1 <= len(text_columns) <= 2:
        raise DataError(f"--text-columns takes one or two column names, got {text_columns}")
    return TaskSpec("custom", "", tuple(text_columns), label_column, header=True, format=fmt)


TEXT_COLUMN_NAMES = (("sentence1", "sentence2"), ("text",), ("sentence",))  # first match wins
LABEL_COLUMN_NAMES = ("label",)


def find_text_columns(columns) -> tuple | None:
    """The text columns among ``columns`` (a header, or a JSON object's keys) by name, as the file
    spells them: ``sentence1`` + ``sentence2`` (a pair), else ``text``, else ``sentence`` (any case)."""
    by_lower = {str(c).strip().lower(): c for c in columns}
    found = next((names for names in TEXT_COLUMN_NAMES if all(n in by_lower for n in names)), None)
    return tuple(by_lower[n] for n in found) if found else None


def detect_columns(path: str | Path, text_columns=(), label_column: str | None = None) -> tuple[tuple[str, ...], str]:
    """The text and label columns of a user's file, found by name in its header (TSV/CSV) or first
    object (JSONL) where not given: ``sentence1`` + ``sentence2`` (a pair), else ``text``, else
    ``sentence``; ``label``. Names match case-insensitively and are returned as the file spells
    them. A header without one is an error naming the file, the columns found and the flag."""
    path = Path(path)
    first = first_row(path, file_format(path))
    columns = list(first) if isinstance(first, dict) else first
    by_lower = {str(c).strip().lower(): c for c in columns}
    texts = tuple(text_columns) or find_text_columns(columns)
    if not texts:
        raise DataError(f"{path}:1: no text column found among the columns {columns}; name one 'text' or "
                        "'sentence' (or two 'sentence1' and 'sentence2'), or pass --text-columns NAME[,NAME]")
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
    """A spec from its stored form; a GLUE task is the library's own spec of that task (so that
    checkpoints written before a field was added read files as today's)."""
    if data.get("name") in GLUE_TASKS:
        return GLUE_TASKS[data["name"]]
    data = dict(data)
    data["text_columns"] = tuple(data["text_columns"])
    data["labels"] = tuple(data.get("labels", ()))
    data["text_names"] = tuple(data.get("text_names", ()))
    return TaskSpec(**data)


def task_from_options(task: str, train_file: str | None = None, text_columns=(), label_column=None) -> TaskSpec:
    """The task a training run reads: a GLUE task, or ``custom`` with its columns and the label set
    of its training file."""
    if task != "custom":
        return get_task(task)
    spec = custom_spec(train_file, list(text_columns), label_column)
    return TaskSpec(**{**asdict(spec), "labels": infer_labels(Path(train_file), spec)})


def load_split(spec: TaskSpec, split: str, data_dir=None, file=None) -> Dataset:
    """A task's ``split`` (a GLUE file), or for a custom task the given ``file``."""
    if spec.name == "custom":
        return read_file(Path(file), for_file(spec, file), spec.labels)
    return load_glue(spec.name, split, data_dir)


# ------------------------------------------------------------------------ texts without labels
def text_columns_for(spec: TaskSpec | None, source: str | Path, fmt: str, columns=(),
                     first: list | dict | None = None) -> tuple[tuple, bool]:
    """Which columns of a file hold a task's texts, and whether it has a header: ``columns`` when
    given; a text file's one column; else the task's text columns *by name* where the file's first
    row (``first``, read from ``source`` when not given) names them (a GLUE task's own files, its
    test file, a CSV or JSONL with the same names), or by position in a headerless file of the
    task's own layout (CoLA); else ``find_text_columns`` (``text``, ``sentence``, ``sentence1`` +
    ``sentence2``). An error names the file, the columns found and ``--text-columns``."""
    if fmt == "txt":
        if spec is not None and len(spec.text_columns) == 2 and not columns:
            raise DataError(f"{source}: a text file holds one text per line, but this model takes sentence pairs; "
                            "give a TSV, CSV or JSONL file with its two text columns")
        return (0,), False
    if columns:
        return tuple(columns), fmt != "jsonl"
    names = tuple(spec.text_names or spec.text_columns) if spec is not None else ()
    first = first_row(source, fmt) if first is None else first
    found = list(first) if isinstance(first, dict) else list(first)
    if names and all(isinstance(n, str) for n in names) and all(n in found for n in names):
        return names, fmt != "jsonl"
    if spec is not None and not spec.header and fmt == spec.format and len(found) == (spec.num_columns or len(found)):
        return tuple(spec.text_columns), False  # the task's own headerless layout (CoLA)
    texts = find_text_columns(found)
    if not texts:
        want = f" (this model's task reads {list(names)})" if names else ""
        raise DataError(f"{source}:1: no text column found among the columns {found}{want}; name one 'text' or "
                        "'sentence' (or two 'sentence1' and 'sentence2'), or pass --text-columns NAME[,NAME]")
    return texts, fmt != "jsonl"


def read_texts(source: str | Path | BinaryIO, fmt: str, columns, header: bool, name: str | None = None,
               on_error: str = "raise") -> Iterator[Row]:
    """Rows of one text or a pair (``Row.values`` = [text, pair or None]) from ``columns`` of a file
    (see ``text_columns_for``); an empty or missing text is a bad row."""
    if not 1 <= len(columns) <= 2:
        raise DataError(f"--text-columns takes one or two columns, got {list(columns)}")
    name = name or str(source)
    for row in read_table(source, fmt, columns, header=header, name=name, on_error=on_error,
                          roles=("text",) * len(columns)):
        if row.error:
            yield row
            continue
        bad = next((c for c, v in zip(columns, row.values) if not isinstance(v, str) or not v.strip()), None)
        if bad is not None:
            if on_error == "raise":
                raise DataError(f"{name}:{row.line}: empty or missing text in {bad!r}")
            yield Row(row.line, error=f"empty or missing text in {bad!r}")
            continue
        yield Row(row.line, [row.values[0], row.values[1] if len(columns) == 2 else None])


# The default calibration slice (``metabert train --calibration-fraction``): 5% of the training file,
# but at least MIN_CALIBRATION_ROWS rows where the file allows it without giving up more than
# MAX_CALIBRATION_SHARE of it. The default promise (at most 1 point below the full model with
# confidence 0.95) certifies nothing on fewer than 299 rows even with no loss at all, and on 1,000
# rows it certifies a threshold whose early exit errs where the full model is right on up to 0.4%
# of them (metabert.eval.risk), a trade-off a real early exit can reach.
DEFAULT_CALIBRATION_FRACTION = 0.05
MIN_CALIBRATION_ROWS = 1000
MAX_CALIBRATION_SHARE = 0.2


def calibration_count(rows: int, fraction: float | None = None) -> int:
    """How many of a training file's ``rows`` are held out for calibration: ``fraction`` of them
    when given, else the default described above."""
    if fraction is not None:
        return int(round(rows * fraction))
    default = int(round(rows * DEFAULT_CALIBRATION_FRACTION))
    return max(default, min(MIN_CALIBRATION_ROWS, int(round(rows * MAX_CALIBRATION_SHARE))))


def held_out(rows: int, count: int, seed: int) -> list[int]:
    """The sorted indices of a seeded held-out slice of ``count`` of ``rows`` rows: the first
    ``count`` of one seeded permutation, so that a larger slice holds a smaller one."""
    order = list(range(rows))
    random.Random(seed).shuffle(order)
    return sorted(order[:count])


def split_off(dataset: Dataset, count: int, seed: int) -> tuple[Dataset, Dataset, list[int]]:
    """A seeded held-out slice of ``count`` examples (e.g. for calibration, ``held_out``): returns
    (rest, held_out, held-out indices)."""
    held = held_out(len(dataset), count, seed)
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


def texts_of(source: str | Path | BinaryIO, spec: TaskSpec | None, fmt: str | None = None, columns=(),
             name: str | None = None, on_error: str = "raise") -> Iterator[Row]:
    """The texts (and pairs) of a file or a stream (stdin) for a model trained on ``spec``: its format
    from ``fmt`` or the extension, its columns by ``text_columns_for`` (a stream's first line is read
    ahead for that, then read again), read by ``read_texts``."""
    name = name or str(source)
    fmt = file_format(name, fmt)
    first = None
    if hasattr(source, "read") and fmt != "txt" and not columns:
        source = Replayed(source)
        first = next(files.read_rows(io.BytesIO(source.first), fmt, name), Row(1, [])).values or []
    found, header = text_columns_for(spec, source, fmt, columns, first)
    if spec is not None and len(found) != len(spec.text_columns) and not columns:
        raise DataError(f"{name}: this model reads {len(spec.text_columns)} text column(s), found {list(found)}; "
                        "pass --text-columns")
    return read_texts(source, fmt, found, header, name, on_error)
