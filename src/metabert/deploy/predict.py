"""Streaming prediction over a file: chunks of rows (``metabert.data.tasks.read_texts``, the one file
reader) are early-exited in length-sorted batches and written back in input order, so files of any
size run in bounded memory."""

from __future__ import annotations

import json
import logging
import sys
from typing import Iterator, TextIO

from tqdm.auto import tqdm

from metabert.data import DEFAULT_MAX_LENGTH
from metabert.data.files import DataError, Row
from metabert.engine.policies import ExitPolicy
from metabert.data.batching import tokenize
from metabert.engine.dataset import run_dataset
from metabert.model.multi_exit import EagerRunner, MultiExitBert

log = logging.getLogger(__name__)


def predict_stream(model: MultiExitBert, rows: Iterator[Row], out: TextIO, policy: ExitPolicy,
                   batch_size: int = 32, max_length: int = DEFAULT_MAX_LENGTH, skip_bad: bool = False, name: str = "input",
                   chunk: int = 512, runner=None, progress: bool = False) -> dict:
    """Write one JSON line per good row of ``rows`` (``Row.values`` = [text, pair or None], bad rows
    with ``error`` set): line, label, probabilities, exit_layer. A bad row stops it, or with
    ``skip_bad`` is reported on stderr and counted. Returns counts. ``runner``: the engine runner to
    answer with (default: the eager model); ``progress``: a bar of rows done on stderr."""
    labels = model.config.label_names
    runner = runner or EagerRunner(model)
    counts = {"predicted": 0, "skipped": 0, "skipped_lines": []}
    pending: list[Row] = []

    def flush():
        if not pending:
            return
        pairs = [r.values[1] for r in pending]
        encoded = tokenize(model.tokenizer, [r.values[0] for r in pending],
                           pairs if all(p is not None for p in pairs) else None, max_length).encoded
        result, _ = run_dataset(runner, encoded, model.tokenizer.pad_token_id, policy, batch_size)
        probs = result.probs
        for k, row in enumerate(pending):
            record = {"line": row.line, "label": labels[int(probs[k].argmax())],
                      "probabilities": {n: round(float(v), 6) for n, v in zip(labels, probs[k])},
                      "exit_layer": int(result.exit_layer[k])}
            out.write(json.dumps(record) + "\n")
        counts["predicted"] += len(pending)
        bar.update(len(pending))
        pending.clear()

    bar = tqdm(desc="predict", unit="row", disable=not progress, mininterval=1.0)
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
    bar.close()
    return counts
