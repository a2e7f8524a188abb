"""Micro-batching: the single worker that gathers queued items into batched early-exit calls."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from metabert.data.batching import pad_all, tokenize
from metabert.deploy.server.config import ServerConfig
from metabert.engine import loop as engine
from metabert.engine.policies import ExitPolicy
from metabert.model.multi_exit import EagerRunner, MultiExitBert

log = logging.getLogger(__name__)


@dataclass
class _Item:
    text: str
    pair: str | None
    policy: ExitPolicy
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


def threshold_range(policy: ExitPolicy, num_labels: int) -> tuple[float, float]:
    if policy.name in ("entropy", "patience-entropy"):
        return 0.0, math.log(num_labels)
    return 0.0, 1.0  # norm-entropy, max-prob


class Batcher:
    """The single worker that turns queued items into batched early-exit calls. ``runner``: the
    backend of the model calls (``metabert.engine.loop.Runner``; eager PyTorch by default)."""

    def __init__(self, model: MultiExitBert, config: ServerConfig, metrics: dict, runner=None):
        self.model, self.config, self.metrics = model, config, metrics
        self.runner = runner if runner is not None else EagerRunner(model)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()  # bounded by `admits`: a request's items go in together
        self.draining = asyncio.Event()
        self.in_flight = 0  # requests accepted, not yet answered
        self.task: asyncio.Task | None = None

    def admits(self, n: int) -> bool:
        return self.queue.qsize() + n <= self.config.max_queue

    def start(self):
        self.task = asyncio.create_task(self._loop())

    def drain(self):
        """Stop waiting for batches to fill: answer what is queued now (shutdown)."""
        self.draining.set()

    async def stop(self):
        if self.task:
            self.task.cancel()

    async def _next(self, timeout: float) -> _Item | None:
        """The next queued item within ``timeout`` seconds; None when there is none or on drain."""
        if self.draining.is_set():
            return self.queue.get_nowait() if not self.queue.empty() else None
        get = asyncio.ensure_future(self.queue.get())
        drain = asyncio.ensure_future(self.draining.wait())
        await asyncio.wait({get, drain}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        drain.cancel()
        if get.done():
            return get.result()
        get.cancel()  # a cancelled get leaves its item in the queue
        return None

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(items) < self.config.max_batch:
                timeout = deadline - loop.time()
                item = await self._next(timeout) if timeout > 0 or self.draining.is_set() else None
                if item is None:
                    break
                items.append(item)
            items = [i for i in items if not i.future.done()]  # timed out while queued: no model call for them
            # only items that can share a model call are batched: same policy, same input kind
            groups: dict[tuple[ExitPolicy, bool], list[_Item]] = {}
            for item in items:
                groups.setdefault((item.policy, item.pair is not None), []).append(item)
            for (policy, _), group in groups.items():
                await self._answer(loop, group, policy)

    async def _answer(self, loop, group: list[_Item], policy: ExitPolicy) -> None:
        """Run a group; if it fails, run its items one by one, so that one item's failure fails only
        the request it belongs to."""
        try:
            results = await loop.run_in_executor(None, self._run, group, policy)
        except Exception as err:
            if len(group) > 1:
                log.warning("a batch of %d failed (%s); retrying item by item", len(group), err)
                for item in group:
                    await self._answer(loop, [item], policy)
                return
            log.exception("an item failed")
            if not group[0].future.done():
                group[0].future.set_exception(err)
            return
        for item, result in zip(group, results):
            if not item.future.done():
                item.future.set_result(result)

    def _run(self, group: list[_Item], policy: ExitPolicy) -> list[dict]:
        model = self.model
        pairs = [i.pair for i in group] if group[0].pair is not None else None
        encoded, truncated, replaced = tokenize(model.tokenizer, [i.text for i in group], pairs,
                                                self.config.max_seq_length, flag_truncated=True)
        out = engine.run(self.runner, pad_all(encoded, model.tokenizer.pad_token_id), policy)
        probs = out.probs
        names = model.config.label_names
        done = time.perf_counter()
        results = []
        for j, item in enumerate(group):
            layer = int(out.exit_layer[j])
            self.metrics["exit_layer"].observe(layer)
            results.append({
                "label": names[int(probs[j].argmax())],
                "probabilities": {n: float(p) for n, p in zip(names, probs[j])},
                "exit_layer": layer,
                "latency_ms": (done - item.queued) * 1000,
                "truncated": truncated[j],
                "replaced_characters": replaced[j],
            })
        return results


