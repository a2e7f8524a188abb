"""What ``metabert bench`` reports beyond the timings of ``metabert.bench.timing``: one row per path and
batch size, the deployment targets, artifact sizes, peak memory, a profile of ONNX Runtime's batch-1
costs, the score-against-speed-up plot and the generated docs/BENCHMARKS.md page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metabert.engine import loop as engine
from metabert.engine.policies import ThresholdPolicy

ROW_FIELDS = ("runner", "mode", "batch_size", "mean_ms", "p50_ms", "p95_ms", "score", "layer_speedup",
              "mean_exit_layer", "speedup_vs_eager_full", "throughput_per_s", "artifact_mb", "peak_rss_mb", "policy")


def rows(results: dict, batch_size: int, artifacts: dict[str, int], memory: dict[str, float]) -> list[dict]:
    """One row per path (runner x full/early) and batch size (1 and ``batch_size``). Batch-1 latency
    is per example; batch-B latency per batch; ``speedup_vs_eager_full`` is the ratio of mean
    latencies (batch 1) or of throughputs (batch B) to the eager fp32 full model's, same run."""
    base = results.get("eager_full")
    out = []
    for r in results.values():
        early = r["mode"] == "early"
        common = {"runner": r["runner"], "mode": r["mode"], "score": r["score"],
                  "layer_speedup": r["layer_speedup"] if early else None, "mean_exit_layer": r["mean_exit_layer"],
                  "artifact_mb": artifacts.get(r["runner"], 0) / 2**20 or None, "peak_rss_mb": memory.get(r["runner"]),
                  "policy": r["policy"]}
        out.append({**common, "batch_size": 1, "mean_ms": r["b1_latency_ms_mean"], "p50_ms": r["b1_latency_ms_p50"],
                    "p95_ms": r["b1_latency_ms_p95"], "throughput_per_s": 1e3 / r["b1_latency_ms_mean"],
                    "speedup_vs_eager_full": base["b1_latency_ms_mean"] / r["b1_latency_ms_mean"] if base else None})
        key = f"b{batch_size}_"
        out.append({**common, "batch_size": batch_size, "mean_ms": r[key + "latency_ms_mean"],
                    "p50_ms": r[key + "latency_ms_p50"], "p95_ms": r[key + "latency_ms_p95"],
                    "throughput_per_s": r[key + "throughput_per_s"],
                    "speedup_vs_eager_full": r[key + "throughput_per_s"] / base[key + "throughput_per_s"] if base else None})
    return [{f: row[f] for f in ROW_FIELDS} for row in out]


def targets(results: dict, batch_size: int, artifacts: dict[str, int]) -> list[dict]:
    """The issue's targets (SST-2 dev, batch 1 unless said): each with what is needed, what was
    measured and whether it is met."""
    r, out = results, []

    def add(what, needed, measured):
        out.append({"target": what, "needed": needed, "measured": measured, "met": bool(measured >= needed - 1e-12)})

    def b1(name):
        return r[name]["b1_latency_ms_mean"]

    if "ort-int8_early" in r and "eager_full" in r:
        add("ORT INT8 early vs eager fp32 full, batch 1 >= 8x", 8.0, b1("eager_full") / b1("ort-int8_early"))
        drop = r["eager_full"]["score"] - r["ort-int8_early"]["score"]
        out.append({"target": "ORT INT8 early: dev score within 1 point of eager full", "needed": 1.0,
                    "measured": drop, "met": bool(drop <= 1.0), "lower_is_better": True})
    if "ort-int8_early" in r:
        add("ORT INT8 early vs ORT INT8 full, batch 1 >= 2x", 2.0, b1("ort-int8_full") / b1("ort-int8_early"))
    key = f"b{batch_size}_throughput_per_s"
    for runner in ("eager", "eager-int8", "ort", "ort-int8"):
        if f"{runner}_early" not in r:
            continue
        layer = r[f"{runner}_early"]["layer_speedup"]
        factor = 0.9 if runner.startswith("ort") else 0.95
        add(f"{runner} early vs {runner} full, batch 1 >= {factor} x layer speed-up ({layer:.2f}x)", factor * layer,
            b1(f"{runner}_full") / b1(f"{runner}_early"))
        add(f"{runner} batch-{batch_size} throughput >= 0.85 x layer speed-up ({layer:.2f}x)", 0.85 * layer,
            r[f"{runner}_early"][key] / r[f"{runner}_full"][key])
    for int8, fp32 in (("ort-int8", "ort"), ("eager-int8", "eager")):
        if artifacts.get(int8) and artifacts.get(fp32):
            ratio = artifacts[int8] / artifacts[fp32]
            out.append({"target": f"{int8} artifact <= 0.5 x {fp32} on disk", "needed": 0.5, "measured": ratio,
                        "met": bool(ratio <= 0.5), "lower_is_better": True})
    return out


def artifact_bytes(runner, checkpoint: str | Path | None = None) -> int:
    """Bytes on disk of what deploys ``runner``: an ONNX folder's graphs (the per-layer graphs, the
    full graph), the checkpoint's weights for eager, the quantized state dict for eager-int8."""
    if runner.name.startswith("ort"):
        return sum(f.stat().st_size for f in Path(runner._directory).glob("*.onnx"))
    if runner.name == "eager-int8":
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(runner.model.state_dict(), Path(tmp) / "int8.pt")
            return (Path(tmp) / "int8.pt").stat().st_size
    from metabert.model.multi_exit import WEIGHTS_NAME

    return (Path(checkpoint) / WEIGHTS_NAME).stat().st_size if checkpoint else 0


_PROBE = """
import json, sys
spec = json.loads(sys.argv[1])
import torch
torch.set_num_threads(spec["threads"])
from metabert.engine import loop as engine
from metabert.data.batching import pad_all, tokenize
from metabert.model.multi_exit import MultiExitBert
from metabert.deploy.runners import load_runner
texts = spec["texts"]
if spec["runner"] != "none":
    # ORT runners never load the PyTorch model; eager-int8 loads the fp32 one and quantizes a copy
    model = None if spec["runner"].startswith("ort") else MultiExitBert.from_pretrained(spec["checkpoint"])
    runner = load_runner(spec["runner"], model, spec["onnx"], threads=spec["threads"])
    del model
    tok = runner.model.tokenizer if hasattr(runner, "model") else runner.tokenizer
    for i in range(0, len(texts), spec["batch_size"]):
        enc = tokenize(tok, texts[i:i + spec["batch_size"]], None, 128).encoded
        engine.run_full(runner, pad_all(enc, tok.pad_token_id))
# VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss over fork and exec
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) / 1024)
"""


def peak_rss_mb(runner: str, checkpoint: str, onnx: str | None, texts: list[str], batch_size: int, threads: int) -> float:
    """Peak resident memory (MiB) of a fresh process that loads ``runner`` and runs the full model
    over ``texts`` at ``batch_size`` (``runner="none"``: the same process without a model, the floor
    of Python, torch and the tokenizer)."""
    spec = {"runner": runner, "checkpoint": str(checkpoint), "onnx": onnx and str(onnx), "texts": texts,
            "batch_size": batch_size, "threads": threads}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(spec)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the memory probe of {runner} failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _per_call_us(fn, count: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count * 1e6


def profile_ort(runner, singles: list[dict], policy, count: int = 100, repeats: int = 20) -> dict:
    """Where ONNX Runtime's batch-1 time goes, in µs per example over the first ``count`` examples:
    the full graph; the per-layer path's pieces (embeddings call, one layer-with-exit call with
    numpy feeds and with OrtValues kept on the ORT side instead, the host exit test with its tensor
    wrapping, building the feeds); a session call of an empty (Identity) graph, the fixed cost of
    any call; and early exit through the fused graph (one call) and through the per-layer steps.
    For the fused rules, the fused graph run with a threshold no exit passes (every layer, every
    exit head, test and ``If``): its excess over the full graph is what the exits cost inside ONNX
    Runtime (``fused_cost_per_exit_us``: per exit the full graph does not have)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from metabert.deploy.onnx_fused import FUSED_POLICIES

    identity = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 17)])
    empty = ort.InferenceSession(identity.SerializeToString(), runner._make_options(), providers=["CPUExecutionProvider"])
    sample = singles[:count]
    out = {"examples": len(sample), "tokens_mean": float(np.mean([int(s["input_ids"].shape[1]) for s in sample]))}
    sums: dict[str, float] = {}
    for inputs in sample:
        feeds = runner._feeds(inputs)
        start = runner.start(inputs)
        hidden, layer_feeds = start[0], runner.layer_feeds(1, start)
        logits = runner.layers[0].run(None, layer_feeds)[1]
        state = policy.init_state(1)
        values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in layer_feeds.items()}
        pieces = {
            "full_graph_call": lambda: runner.full_session.run(None, feeds),
            "embeddings_call": lambda: runner.embeddings.run(None, feeds),
            "layer_call": lambda: runner.layers[1].run(None, layer_feeds),
            "layer_call_ortvalues": lambda: runner.layers[1].run_with_ort_values(["hidden_out", "logits"], values),
            "exit_test_host": lambda: policy.step(torch.from_numpy(logits), state),
            "feeds_copy": lambda: runner._feeds(inputs),
            "empty_session_call": lambda: empty.run(None, {"x": hidden}),
            "fused_early_exit_call": lambda: engine.run(runner, inputs, policy),
            "stepped_early_exit": lambda: _stepped(runner, inputs, policy),
        }
        if policy.name in FUSED_POLICIES:
            never = policy.never_exits()
            pieces["fused_never_exit_call"] = lambda: engine.run(runner, inputs, never)
        for name, fn in pieces.items():
            sums[name] = sums.get(name, 0.0) + _per_call_us(fn, repeats)
    out.update({k + "_us": v / len(sample) for k, v in sums.items()})
    if "fused_never_exit_call_us" in out:  # the full graph has one exit, the fused one every exit
        out["fused_cost_per_exit_us"] = (out["fused_never_exit_call_us"] - out["full_graph_call_us"]) / (runner.num_layers - 1)
    return out


def profile_eager(runner, singles: list[dict], policy, count: int = 100, repeats: int = 20) -> dict:
    """Where eager PyTorch's batch-1 time goes, in µs per example over the first ``count`` examples:
    the full model; the early-exit path's pieces (``start``: embeddings and masks; one layer alone;
    its exit head; the exit test as the engine runs it at batch 1; a whole step, layer and head);
    and the early exit itself. The pieces a full model pays once (start, one head) and the early
    exit pays per layer (a head and a test) are what the layer speed-up does not count. Timed alone,
    in a loop, the pieces find their weights in cache; the early exit run with a threshold no exit
    passes (every layer, head and test) less the full model, per exit (``loop_cost_per_exit_us``),
    is what an exit costs inside the real loop."""
    sample = singles[:count]
    out = {"examples": len(sample), "tokens_mean": float(np.mean([int(s["input_ids"].shape[1]) for s in sample]))}
    sums: dict[str, float] = {}
    model = runner.model
    with torch.inference_mode():
        for inputs in sample:
            hidden, layer_inputs = runner.start(inputs)
            state = policy.init_state(1)
            logits = model.exit_logits(1, hidden, layer_inputs, train=False)
            pieces = {
                "full_model": lambda: runner.full(inputs),
                "start": lambda: runner.start(inputs),
                "layer": lambda: model.run_layer(1, hidden, layer_inputs),
                "exit_head": lambda: model.exit_logits(1, hidden, layer_inputs, train=False),
                "exit_test": lambda: engine.leaves_one(policy, logits, state),
                "step_layer_and_head": lambda: runner.step(1, (hidden, layer_inputs)),
                "early_exit": lambda: engine.run(runner, inputs, policy),
            }
            if isinstance(policy, ThresholdPolicy):
                never = policy.never_exits()
                pieces["never_exit"] = lambda: engine.run(runner, inputs, never)
            for name, fn in pieces.items():
                sums[name] = sums.get(name, 0.0) + _per_call_us(fn, repeats)
    out.update({k + "_us": v / len(sample) for k, v in sums.items()})
    if "never_exit_us" in out:  # the full model has one exit head, the never-exiting loop every one
        out["loop_cost_per_exit_us"] = (out["never_exit_us"] - out["full_model_us"]) / (runner.num_layers - 1)
    return out


def _stepped(runner, inputs, policy):
    fused, runner.fused = runner.fused, False
    try:
        return engine.run(runner, inputs, policy)
    finally:
        runner.fused = fused


def plot(rows_: list[dict], path: str | Path, title: str) -> None:
    """Score against speed-up over eager fp32 full, every path, batch 1 and batch B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for batch, marker in zip(sorted({r["batch_size"] for r in rows_}), ("o", "s")):
        for r in (r for r in rows_ if r["batch_size"] == batch):
            ax.scatter(r["speedup_vs_eager_full"], r["score"], marker=marker,
                       color="C0" if r["mode"] == "full" else "C3")
            ax.annotate(f"{r['runner']} {r['mode']} (b{batch})", (r["speedup_vs_eager_full"], r["score"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="speed-up over eager fp32 full (batch 1: mean latency; batch B: throughput)",
           ylabel="dev score", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict, command: str, plot_name: str | None) -> str:
    """docs/BENCHMARKS.md from one ``metabert bench`` report (generated, not typed)."""
    b = report["batch_size"]
    out = ["# Benchmarks", "",
           f"Generated by `{command}` on {report['date']} from its JSON report (`{report['json_name']}`). "
           "Do not edit by hand.", "",
           f"Hardware: {report['hardware_summary']} ({report['hardware']}); {report['threads']} threads for PyTorch "
           f"and ONNX Runtime. Load average (1 min) {report['load_average_start']:.2f} at the start, "
           f"{report['load_average_end']:.2f} at the end (the 2 cores are shared with other jobs).", "",
           f"{report['task']} {report['split']}, {report['num_examples']} examples; checkpoint `{report['checkpoint']}`; "
           f"{report['repeats']} interleaved rounds after {report['warmup']} warm-up examples, PyTorch runners in "
           "one phase and ONNX Runtime runners in another, all variants of a phase interleaved ("
           + ("at batch 1 each variant runs 50 consecutive examples in turn, block after block, as a server runs "
              "one path" if report.get("interleave", "example") == "block" else
              "at batch 1 each example is run by every variant in turn")
           + "; `metabert.bench.timing` says why). Each runner's "
           f"γ: {report['policy_source']}.", "",
           "| runner | mode | batch | score | mean exit layer | layer speed-up | mean ms | p50 ms | p95 ms | "
           "ex/s | speed-up vs eager full | artifact MiB | peak RSS MiB | policy |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        layer = f"{r['layer_speedup']:.2f}x" if r["layer_speedup"] else ""
        art = f"{r['artifact_mb']:.1f}" if r["artifact_mb"] else ""
        mem = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else ""
        out.append(f"| {r['runner']} | {r['mode']} | {r['batch_size']} | {r['score']:.2f} | {r['mean_exit_layer']:.2f} | "
                   f"{layer} | {r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['throughput_per_s']:.0f} | "
                   f"{r['speedup_vs_eager_full']:.2f}x | {art} | {mem} | {r['policy'] or 'every layer'} |")
    out += ["", f"Batch 1: latency per example; batch {b}: per batch of {b} (file order, mixed lengths); speed-ups "
                "are ratios of mean latencies (batch 1) or throughputs (batch B) in this run. Artifact: the ONNX "
                "folder's graphs (per-layer graphs and the full graph, each holding its weights) or the PyTorch "
                f"weights. Peak RSS: a fresh process loading the runner and running the dev set at batch {b} "
                f"(the same process without a model: {report.get('rss_floor_mb', 0):.0f} MiB).", ""]
    if plot_name:
        out += [f"![score against speed-up]({plot_name})", ""]
    out += ["## Targets", "", "| target | needed | measured | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        unit = "" if t.get("lower_is_better") else "x"
        sign = "<=" if t.get("lower_is_better") else ">="
        out.append(f"| {t['target']} | {sign} {t['needed']:.2f}{unit} | {t['measured']:.2f}{unit} | "
                   f"{'yes' if t['met'] else '**no**'} |")
    ceilings = [(name, v) for name, v in report.get("variants", {}).items() if "ideal_b1_speedup" in v]
    if ceilings:
        out += ["", "## Batch 1: layer speed-up, its wall-clock ceiling, and what was reached", "",
                "The layer speed-up counts layers. Its wall-clock ceiling cuts each example's full-model time "
                "pro rata to the layers that example ran (no overhead at all, but long inputs cost more per "
                "layer and leave later, so the ceiling sits below the layer count). The gap from the ceiling "
                "to the speed-up reached is the early-exit path's own cost: an exit head and an exit test per "
                "layer run, and the fixed cost per call.", "",
                "| runner | layer speed-up | ceiling (no overhead) | reached | reached / layer speed-up | reached / ceiling |",
                "|---|---|---|---|---|---|"]
        for name, v in ceilings:
            full = report["variants"].get(name.split("_")[0] + "_full")
            if not full:
                continue
            reached = full["b1_latency_ms_mean"] / v["b1_latency_ms_mean"]
            out.append(f"| {v['runner']} | {v['layer_speedup']:.2f}x | {v['ideal_b1_speedup']:.2f}x | {reached:.2f}x | "
                       f"{reached / v['layer_speedup']:.2f} | {reached / v['ideal_b1_speedup']:.2f} |")
    out += ["", "## Every exit's dev score, per runner", "",
            "| runner | " + " | ".join(f"exit {i + 1}" for i in range(len(next(iter(report["per_exit"].values()))))) + " |",
            "|---|" + "---|" * len(next(iter(report["per_exit"].values())))]
    for name, scores in report["per_exit"].items():
        out.append(f"| {name} | " + " | ".join(f"{s:.2f}" for s in scores) + " |")
    for name, cal in report.get("calibration", {}).items():
        out.append("")
        out.append(f"- {name}: {cal}")
    for name, prof in report.get("profile", {}).items():
        out += ["", f"## Profile: {name} at batch 1", "",
                f"µs per example over the first {prof['examples']} dev examples ({prof['tokens_mean']:.1f} tokens "
                "on average), each piece timed on its own in a loop (warm caches, so a lower bound of its cost "
                "inside the real loop).", "", "| piece | µs |", "|---|---|"]
        for key, value in prof.items():
            if key == "fused_cost_per_exit_us":
                out.append(f"| each exit inside the fused graph (never exit - full graph call, / {len(report['per_exit'][name]) - 1}) "
                           f"| {value:.1f} |")
            elif key == "loop_cost_per_exit_us":
                out.append(f"| each exit inside the loop (never exit - full model, / {len(report['per_exit'][name]) - 1}) "
                           f"| {value:.1f} |")
            elif key.endswith("_us"):
                out.append(f"| {key[:-3].replace('_', ' ')} | {value:.1f} |")
    for note in report.get("notes", []):
        out += ["", note]
    return "\n".join(out) + "\n"


def targets_across_runs(reports: list[tuple[str, dict]]) -> str:
    """Markdown: each deployment target's measured value in each of several ``metabert bench``
    reports ((file name, JSON) pairs, in run order), and in how many runs it was met. On a shared
    machine one run can meet a target the next one misses; this page says which targets held in
    every run."""
    names = [name for name, _ in reports]
    out = ["# Deployment targets across bench runs", "",
           f"Generated by `python scripts/bench_runs.py {' '.join(names)}`. Do not edit by hand.", "",
           "| run | date | load average start -> end | eager full b1 ms | ORT INT8 full b1 ms |", "|---|---|---|---|---|"]
    for name, report in reports:
        mean = {(r["runner"], r["mode"], r["batch_size"]): r["mean_ms"] for r in report["rows"]}
        out.append(f"| {name} | {report['date']} | {report['load_average_start']:.2f} -> {report['load_average_end']:.2f} "
                   f"| {mean[('eager', 'full', 1)]:.2f} | {mean[('ort-int8', 'full', 1)]:.2f} |")
    out += ["", "| target | needed | " + " | ".join(f"run {i + 1}" for i in range(len(reports))) + " | met in |",
            "|---|---|" + "---|" * len(reports) + "---|"]
    def key(target: dict) -> str:  # a ratio target names the run's own layer speed-up: "... (2.53x)"
        return re.sub(r" \([\d.]+x\)$", "", target["target"])

    for target in reports[-1][1]["targets"]:
        found = [next((t for t in r["targets"] if key(t) == key(target)), None) for _, r in reports]
        cells = ["" if t is None else f"{t['measured']:.2f}{'' if t['met'] else ' (no)'}" for t in found]
        met = sum(bool(t and t["met"]) for t in found)
        out.append(f"| {key(target)} | {target['needed']:.2f} (last run) | " + " | ".join(cells) + f" | {met} of {len(reports)} |")
    return "\n".join(out) + "\n"
