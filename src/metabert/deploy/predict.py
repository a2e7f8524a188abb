"""Streaming prediction over a file: chunks of rows are read, early-exited in length-sorted batches
and written back in input order, so files of any size run in bounded memory."""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass
from typing import Iterator, TextIO


from metabert.data.tasks import DataError
from metabert.engine.policies import ExitPolicy
from metabert.data.batching import tokenize
from metabert.eval.evaluate import run_dataset
from metabert.model.multi_exit import EagerRunner, MultiExitBert

log = logging.getLogger(__name__)


@dataclass
class Row:
    line: int
    text: str | None = None
    pair: str | None = None
    error: str | None = None


def _lines(stream) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, decode error) from a binary stream."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, None, f"not valid UTF-8 ({err.reason} at byte {err.start})"
            continue
        yield number, text.removeprefix("\ufeff") if number == 1 else text, None


def read_rows(stream, fmt: str, columns: list[str], name: str) -> Iterator[Row]:
    """Rows of one text (or a pair) from TSV/CSV (with a header) or JSONL; a bad row becomes a
    Row with ``error`` set, so the caller decides whether to stop or skip."""
    if not 1 <= len(columns) <= 2:
        raise DataError(f"--text-columns takes one or two columns, got {columns}")

    def make(line, values):
        texts = [v for v in values]
        for col, v in zip(columns, texts):
            if not isinstance(v, str) or not v.strip():
                return Row(line, error=f"empty or missing text in {col!r}")
        return Row(line, texts[0], texts[1] if len(texts) > 1 else None)

    if fmt == "jsonl":
        for number, text, error in _lines(stream):
            if error:
                yield Row(number, error=error)
                continue
            if not text.strip():
                yield Row(number, error="empty line")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield Row(number, error=f"invalid JSON ({err.msg})")
                continue
            if not isinstance(obj, dict):
                yield Row(number, error="expected a JSON object")
                continue
            yield make(number, [obj.get(c) for c in columns])
        return
    header, index = None, None
    for number, text, error in _lines(stream):
        if error:
            if header is None:
                raise DataError(f"{name}:{number}: {error}")
            yield Row(number, error=error)
            continue
        try:
            row = next(csv.reader([text], delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv"
                       else csv.reader([text]))
        except (csv.Error, StopIteration) as err:
            yield Row(number, error=f"unreadable row ({err})")
            continue
        if header is None:
            header = row
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"{name}:1: no column {missing[0]!r} in header {header}")
            index = [header.index(c) for c in columns]
            continue
        if len(row) != len(header):
            yield Row(number, error=f"expected {len(header)} columns, found {len(row)}")
            continue
        yield make(number, [row[i] for i in index])


def predict_stream(model: MultiExitBert, rows: Iterator[Row], out: TextIO, policy: ExitPolicy,
                   batch_size: int = 32, max_length: int = 128, skip_bad: bool = False, name: str = "input",
                   chunk: int = 512, runner=None) -> dict:
    """Write one JSON line per good row: line, label, probabilities, exit_layer. Returns counts.
    ``runner``: the engine runner to answer with (default: the eager model)."""
    labels = model.config.label_names
    runner = runner or EagerRunner(model)
    counts = {"predicted": 0, "skipped": 0, "skipped_lines": []}
    pending: list[Row] = []

    def flush():
        if not pending:
            return
        pairs = [r.pair for r in pending]
        encoded = tokenize(model.tokenizer, [r.text for r in pending],
                           pairs if all(p is not None for p in pairs) else None, max_length).encoded
        result, _ = run_dataset(runner, encoded, model.tokenizer.pad_token_id, policy, batch_size)
        probs = result.probs
        for k, row in enumerate(pending):
            record = {"line": row.line, "label": labels[int(probs[k].argmax())],
                      "probabilities": {n: round(float(v), 6) for n, v in zip(labels, probs[k])},
                      "exit_layer": int(result.exit_layer[k])}
            out.write(json.dumps(record) + "\n")
        counts["predicted"] += len(pending)
        pending.clear()

    for row in rows:
        if row.error:
            if not skip_bad:
                raise DataError(f"{name}:{row.line}: {row.error} (use --skip-bad to report and skip such rows)")
            counts["skipped"] += 1
            counts["skipped_lines"].append(row.line)
            print(f"{name}:{row.line}: skipped: {row.error}", file=sys.stderr)
            continue
        pending.append(row)
        if len(pending) >= chunk:
            flush()
    flush()
    return counts
