"""The engine over a whole data set: length-sorted padded batches through a runner, results put back
in the data set's order. Evaluate, predict, calibration and the trainer's dev evaluation run here."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from metabert.data.batching import Encoded, eval_batches, iterate, model_inputs
from metabert.engine import loop
from metabert.engine.loop import ExitResult
from metabert.engine.policies import ExitPolicy


@torch.no_grad()
def over_dataset(data: Encoded, batch_size: int, pad_id: int, logits_of, progress: bool = False,
                 shape: tuple[int, int] | None = None) -> torch.Tensor | None:
    """``logits_of(batch)`` -> (L, B, C) over length-sorted padded batches, put back in the dataset's
    order: (L, N, C). ``shape`` (L, C) allocates up front (an empty dataset then gives (L, 0, C))."""
    out = torch.empty(shape[0], len(data), shape[1]) if shape else None
    batches = eval_batches(data, batch_size)
    for batch in tqdm(iterate(data, batches, pad_id), total=len(batches), desc="all exits", disable=not progress):
        logits = logits_of(batch).float()
        if out is None:
            out = torch.empty(logits.shape[0], len(data), logits.shape[-1])
        out[:, batch["index"]] = logits
    return out


def run_dataset(runner, data: Encoded, pad_id: int, policy: ExitPolicy | None,
                batch_size: int = 64) -> tuple[ExitResult, float]:
    """Early exit (``policy``; None: the full model) over a dataset in length-sorted padded batches,
    through the engine. Returns (the result in dataset order, seconds; padding is not timed)."""
    batches = list(iterate(data, eval_batches(data, batch_size), pad_id))
    logits, layers = None, torch.empty(len(data), dtype=torch.long)
    start = time.perf_counter()
    outputs = [loop.run(runner, model_inputs(b), policy) if policy is not None else loop.run_full(runner, model_inputs(b))
               for b in batches]
    seconds = time.perf_counter() - start
    for batch, out in zip(batches, outputs):
        if logits is None:
            logits = torch.empty(len(data), out.logits.shape[-1])
        logits[batch["index"]] = out.logits.float()
        layers[batch["index"]] = out.exit_layer
    return ExitResult(logits, layers), seconds


def runner_logits(runner, data: Encoded, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Every exit's logits (L, N, C) for every example, in the dataset's order, through ``runner``'s
    own layer steps (what calibration chooses γ on)."""
    return over_dataset(data, batch_size, pad_id, lambda batch: loop.every_exit(runner, model_inputs(batch)))
