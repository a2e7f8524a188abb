"""One harness for speed: the full model and the early-exit model of every runner (eager PyTorch
and ONNX Runtime, fp32 and INT8), on the same inputs, in one process.

Method: per library (PyTorch runners, then ONNX Runtime ones; see ``backends``), warm-up, then
``repeats`` rounds, the variants' order rotating between rounds, so that all see the same machine
conditions. ``interleave="block"`` (the default): in a round each variant runs a block of
``BLOCK`` consecutive examples in turn, block after block, as a server runs one path for many
requests in a row, while every variant still sees the machine at every moment of the run (whole
passes over the dev set, tried first, let one variant meet a quiet minute the others did not: in one
such run of benchmarks/benchmarks.sh ORT INT8 full measured 1.04 ms per example, against 2.37 and
2.59 ms in the runs before and after it; that run was discarded, not committed); ``"example"``: each example is run by
every variant in turn, which also evicts one variant's weights from the CPU caches with another's
(``benchmarks/interleave_check.py`` times ORT full and early exit both ways; on this shared 2-core
machine early exit ran 27% slower alternating than alone in one check and within the noise of two
rounds in another, results/bench/interleave_check.txt).
An example's latency is the median of its rounds; a variant's latency is the mean over examples.
Speed-ups are ratios of those means (total time), not of medians, because the median of a bimodal
exit distribution flatters early exit. Throughput at batch B runs batches in file order (mixed
lengths, as served), the median of the rounds. Tokenisation is timed apart and left out of both.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from metabert.engine import loop as engine
from metabert.data import metrics as metrics
from metabert.data.batching import Encoded, collate, model_inputs
from metabert.engine.loop import ExitResult
from metabert.engine.policies import ExitPolicy
from metabert.model.multi_exit import MultiExitBert


def layer_flops(tokens: int, hidden: int, intermediate: int) -> int:
    """Multiply-adds x2 of one transformer layer on one sequence of ``tokens`` tokens."""
    projections = 2 * tokens * 4 * hidden * hidden
    ffn = 2 * tokens * 2 * hidden * intermediate
    attention = 2 * 2 * tokens * tokens * hidden
    return projections + ffn + attention


def head_flops(tokens: int, hidden: int, classes: int, dense: bool = True) -> int:
    """An exit head: mean pooling, dense (pooler heads), linear (softmax, exit test: negligible)."""
    return tokens * hidden + (2 * hidden * hidden if dense else 0) + 2 * hidden * classes


def flops_per_sample(model: MultiExitBert, lengths: list[int], exit_layers: list[int] | None) -> float:
    """Mean FLOPs per sample; ``exit_layers`` None = the full model (every layer, last head only).
    An early-exit sample pays for every exit head up to the one it leaves at."""
    cfg = model.encoder.config
    total = 0
    for i, n in enumerate(lengths):
        layer = layer_flops(n, cfg.hidden_size, cfg.intermediate_size)
        head = head_flops(n, cfg.hidden_size, model.config.num_labels, model.config.head == "pooler")
        k = model.num_layers if exit_layers is None else exit_layers[i]
        total += k * layer + (head if exit_layers is None else k * head)
    return total / len(lengths)


@dataclass
class Variant:
    """One path to time: a runner, run early (with the policy) or full. ``name`` is
    ``<runner>_<full|early>``."""

    runner: object  # a metabert.engine.loop.Runner
    policy: ExitPolicy | None  # None: the full model
    suffix: str = ""  # tells apart several early variants of one runner

    @property
    def name(self) -> str:
        return f"{self.runner.name}_{'full' if self.policy is None else 'early'}{self.suffix}"

    def run(self, inputs: dict) -> ExitResult:
        return engine.run_full(self.runner, inputs) if self.policy is None else engine.run(self.runner, inputs, self.policy)


def variants(runners: list, policy: ExitPolicy | dict[str, ExitPolicy]) -> list[Variant]:
    """The full and the early-exit path of every runner; ``policy`` one for all, or one per runner
    name (each runner's own calibrated γ)."""
    return [Variant(r, p) for r in runners
            for p in (None, policy[r.name] if isinstance(policy, dict) else policy)]


def time_tokenizer(tokenizer, texts: list[tuple[str, str | None]], max_length: int, batch_size: int) -> dict:
    start = time.perf_counter()
    for text, pair in texts:
        tokenizer(text, pair, truncation=True, max_length=max_length)
    one = (time.perf_counter() - start) / len(texts)
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        pairs = [p for _, p in chunk] if chunk[0][1] is not None else None
        tokenizer([t for t, _ in chunk], pairs, truncation=True, max_length=max_length, padding=True)
    batched = (time.perf_counter() - start) / len(texts)
    return {"tokenize_b1_ms": one * 1e3, f"tokenize_b{batch_size}_ms_per_example": batched * 1e3}


def backend(runner) -> str:
    """The library a runner computes with (``torch``, ``onnxruntime``, ``openvino``): its ``backend``,
    else what its name says (``eager*``: torch; ``ort*``: onnxruntime)."""
    found = getattr(runner, "backend", None)
    if found:
        return found
    return "torch" if runner.name.startswith("eager") else "onnxruntime"


def backends(variants: list[Variant]) -> list[list[Variant]]:
    """Variants grouped by backend (``backend``). Each backend is measured in a phase of its own:
    PyTorch's OpenMP threads and ONNX Runtime's pool both spin for a while after their work, and
    interleaving the two backends made each slow the other down by 2-3x on 2 cores. Inside a phase
    every variant is interleaved with every other, ours and the plain recipes alike."""
    groups: dict[str, list[Variant]] = {}
    for v in variants:
        groups.setdefault(backend(v.runner), []).append(v)
    return list(groups.values())


INTERLEAVE = ("block", "example")
BLOCK = 50  # examples a variant runs in a row (interleave="block")


def batch1_latencies(group: list[Variant], singles: list[dict], repeats: int, warmup: int,
                     bar=None, interleave: str = "block") -> tuple[dict[str, np.ndarray], dict[str, list[ExitResult]]]:
    """The one batch-1 timing loop: after ``warmup`` examples, ``repeats`` rounds (the variants'
    order rotating between rounds, so that all see the same machine conditions) in which each
    variant runs ``BLOCK`` consecutive examples in turn, block after block (``interleave="block"``),
    or every example is run by each variant in turn (``"example"``). Returns seconds (repeats, N) and the last round's results per
    variant."""
    if interleave not in INTERLEAVE:
        raise ValueError(f"interleave must be one of {INTERLEAVE}, got {interleave!r}")
    for v in group:
        for inputs in singles[:warmup]:
            v.run(inputs)
    times = {v.name: np.zeros((repeats, len(singles))) for v in group}
    outputs = {v.name: [None] * len(singles) for v in group}
    for r in range(repeats):
        order = group[r % len(group):] + group[: r % len(group)]
        block = BLOCK if interleave == "block" else 1
        schedule = [(v, i) for start in range(0, len(singles), block) for v in order
                    for i in range(start, min(start + block, len(singles)))]
        for v, i in schedule:
            start = time.perf_counter()
            out = v.run(singles[i])
            times[v.name][r, i] = time.perf_counter() - start
            outputs[v.name][i] = out
            if bar is not None:
                bar.update(1)
    return times, outputs


def run_bench(model: MultiExitBert, data: Encoded, metric: str, variants: list[Variant], repeats: int = 5,
              warmup: int = 20, batch_size: int = 32, progress: bool = True, interleave: str = "block") -> dict:
    """Latency at batch 1 and throughput at ``batch_size`` of every variant (see module docstring)."""
    pad = model.tokenizer.pad_token_id
    singles = [model_inputs(collate(data, [i], pad)) for i in range(len(data))]
    n = len(singles)  # each backend's variants are warmed up just before they are timed (batch1_latencies)
    lat, preds, layers = {}, {}, {}
    through = {v.name: [] for v in variants}
    batch_times = {v.name: [] for v in variants}  # per round: seconds of each batch
    batches = [model_inputs(collate(data, list(range(s, min(s + batch_size, n))), pad)) for s in range(0, n, batch_size)]
    bar = tqdm(total=repeats * n * len(variants), desc="batch-1 latency", disable=not progress, unit="run")
    for group in backends(variants):
        times, outputs = batch1_latencies(group, singles, repeats, warmup, bar, interleave)
        for v in group:
            lat[v.name] = times[v.name]
            preds[v.name] = np.array([int(o.predictions[0]) for o in outputs[v.name]])
            layers[v.name] = np.array([int(o.exit_layer[0]) for o in outputs[v.name]])
        for v in group:
            v.run(batches[0])
        for r in range(repeats):
            order = group[r % len(group):] + group[: r % len(group)]
            for v in order:
                times = []
                for batch in batches:
                    start = time.perf_counter()
                    v.run(batch)
                    times.append(time.perf_counter() - start)
                through[v.name].append(n / sum(times))
                batch_times[v.name].append(times)
    bar.close()

    lengths = [len(ids) for ids in data.input_ids]
    out = {}
    medians = {name: np.median(t, axis=0) * 1e3 for name, t in lat.items()}  # ms per example
    for v in variants:
        per_example = medians[v.name]
        per_batch = np.median(np.array(batch_times[v.name]), axis=0) * 1e3  # ms per batch
        is_full = v.name.endswith("_full")
        out[v.name] = {
            "runner": v.runner.name,
            "plain": bool(getattr(v.runner, "plain", False)),
            "backend": backend(v.runner),
            "mode": "full" if is_full else "early",
            "policy": None if is_full else v.policy.describe(),
            **{k: val for k, val in metrics.compute(metric, preds[v.name].tolist(), data.labels).items()},
            "mean_exit_layer": float(layers[v.name].mean()),
            "layer_speedup": model.num_layers / float(layers[v.name].mean()),
            "b1_latency_ms_mean": float(per_example.mean()),
            "b1_latency_ms_p50": float(np.percentile(per_example, 50)),
            "b1_latency_ms_p95": float(np.percentile(per_example, 95)),
            f"b{batch_size}_throughput_per_s": float(statistics.median(through[v.name])),
            f"b{batch_size}_latency_ms_mean": float(per_batch.mean()),
            f"b{batch_size}_latency_ms_p50": float(np.percentile(per_batch, 50)),
            f"b{batch_size}_latency_ms_p95": float(np.percentile(per_batch, 95)),
            "flops_per_sample": flops_per_sample(model, lengths, None if is_full else layers[v.name].tolist()),
            "exit_counts": np.bincount(layers[v.name], minlength=model.num_layers + 1)[1:].tolist(),
        }
        full = medians.get(v.name.split("_")[0] + "_full")
        if not is_full and full is not None:
            # each example's full-model time cut pro rata to the layers it ran: the wall-clock
            # speed-up early exit would give with no overhead at all, for these very exits
            ideal = (full * layers[v.name] / model.num_layers).sum()
            out[v.name]["ideal_b1_speedup"] = float(full.sum() / ideal)
    return out


def speedups(results: dict, batch_size: int = 32) -> dict:
    """The headline ratios (each a ratio of means over the same examples, taken in the same run)."""
    r = results
    key = f"b{batch_size}_throughput_per_s"
    out = {} if "eager_early" not in r else {
        "layer_speedup": r["eager_early"]["layer_speedup"],
        "flops_speedup": r["eager_full"]["flops_per_sample"] / r["eager_early"]["flops_per_sample"],
        "wall_speedup_b1": r["eager_full"]["b1_latency_ms_mean"] / r["eager_early"]["b1_latency_ms_mean"],
        f"throughput_speedup_b{batch_size}": r["eager_early"][key] / r["eager_full"][key],
    }
    if "eager_early" in r:
        out["ideal_wall_speedup_b1"] = r["eager_early"]["ideal_b1_speedup"]
    if "ort_early" in r and "eager_full" in r:
        out.update(
            ort_wall_speedup_b1=r["ort_full"]["b1_latency_ms_mean"] / r["ort_early"]["b1_latency_ms_mean"],
            ort_early_vs_eager_full_b1=r["eager_full"]["b1_latency_ms_mean"] / r["ort_early"]["b1_latency_ms_mean"],
            ort_ideal_wall_speedup_b1=r["ort_early"]["ideal_b1_speedup"],
            ort_full_vs_eager_full_b1=r["eager_full"]["b1_latency_ms_mean"] / r["ort_full"]["b1_latency_ms_mean"],
            **{f"ort_throughput_speedup_b{batch_size}": r["ort_early"][key] / r["ort_full"][key]},
        )
    fastest = fastest_plain(r)
    if fastest:  # every early path against the fastest plain recipe, batch 1 (mean latency)
        out["fastest_plain_b1"] = fastest
        out["vs_fastest_plain_b1"] = {name: r[fastest]["b1_latency_ms_mean"] / v["b1_latency_ms_mean"]
                                      for name, v in r.items() if v["mode"] == "early" or name.endswith("_full")}
    return out


def fastest_plain(results: dict, int8: bool = False) -> str | None:
    """The plain recipe's variant (``"plain": true``; ``int8``: an INT8 one) with the lowest batch-1
    mean latency in ``results``, or None where there is none."""
    plain = [name for name, v in results.items() if v.get("plain") and (not int8 or "int8" in name)]
    return min(plain, key=lambda name: results[name]["b1_latency_ms_mean"]) if plain else None


def format_table(results: dict, ratios: dict, batch_size: int = 32) -> str:
    key = f"b{batch_size}_throughput_per_s"
    lines = [f"| variant | score | mean exit layer | FLOPs/sample (M) | b1 mean ms | b1 p50 ms | b1 p95 ms | b{batch_size} ex/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['score']:.2f} | {r['mean_exit_layer']:.2f} | {r['flops_per_sample'] / 1e6:.1f} | "
                     f"{r['b1_latency_ms_mean']:.2f} | {r['b1_latency_ms_p50']:.2f} | {r['b1_latency_ms_p95']:.2f} | "
                     f"{r[key]:.0f} |")
    lines += ["", "| ratio (of means over the same examples, in the same run) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in ratios.items() if isinstance(v, float)]
    if "fastest_plain_b1" in ratios:
        lines += [f"| {k} vs {ratios['fastest_plain_b1']}, batch 1 | {v:.2f}x |"
                  for k, v in ratios["vs_fastest_plain_b1"].items()]
    return "\n".join(lines)
