"""What ``metabert bench`` reports beyond the timings of ``metabert.bench.timing``: one row per path and
batch size, the deployment targets, artifact sizes, peak memory and the score-against-speed-up plot
(the batch-1 profiles are ``metabert.bench.profile``; the docs page, ``metabert.recipes.pages.bench``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from metabert.bench.timing import fastest_plain


ROW_FIELDS = ("runner", "plain", "mode", "batch_size", "mean_ms", "p50_ms", "p95_ms", "score", "layer_speedup",
              "mean_exit_layer", "speedup_vs_eager_full", "throughput_per_s", "artifact_mb", "peak_rss_mb", "policy")


def rows(results: dict, batch_size: int, artifacts: dict[str, int], memory: dict[str, float]) -> list[dict]:
    """One row per path (runner x full/early) and batch size (1 and ``batch_size``). Batch-1 latency
    is per example; batch-B latency per batch; ``speedup_vs_eager_full`` is the ratio of mean
    latencies (batch 1) or of throughputs (batch B) to the eager fp32 full model's, same run."""
    base = results.get("eager_full")
    out = []
    for r in results.values():
        early = r["mode"] == "early"
        common = {"runner": r["runner"], "plain": r.get("plain", False), "mode": r["mode"], "score": r["score"],
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
    fastest = fastest_plain(r)
    if fastest and "ort-int8_early" in r:  # the plain recipes a user would pick, timed in the same run
        add(f"ORT INT8 early vs the fastest plain recipe ({r[fastest]['runner']}), batch 1 >= 2.5x", 2.5,
            b1(fastest) / b1("ort-int8_early"))
        fastest_int8 = fastest_plain(r, int8=True)
        if fastest_int8 and "ort-int8_full" in r:
            add(f"ORT INT8 full vs the fastest plain INT8 full ({r[fastest_int8]['runner']}), batch 1 >= 1.3x", 1.3,
                b1(fastest_int8) / b1("ort-int8_full"))
    if "ort-int8-single_early" in r and "ort-int8_early" in r:  # one file against the per-layer path's fused graph
        add("ORT INT8 single file early vs ORT INT8 per-layer early, batch 1 >= 1x", 1.0,
            b1("ort-int8_early") / b1("ort-int8-single_early"))
    key = f"b{batch_size}_throughput_per_s"
    for runner in ("eager", "eager-int8", "ort", "ort-int8", "ort-single", "ort-int8-single"):
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
    if getattr(runner, "path", None) is not None:  # one file (the single ONNX file)
        return Path(runner.path).stat().st_size
    if runner.name.startswith("ort"):  # the per-layer graphs and the full graph, not a single file beside them
        return sum(f.stat().st_size for f in Path(runner.directory).glob("*.onnx") if f.name != "early_exit.onnx")
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

from metabert.bench.timing import fastest_plain
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


def plot(rows_: list[dict], path: str | Path, title: str) -> None:
    """Score against speed-up over eager fp32 full, every path, batch 1 and batch B."""
    from metabert.eval.plots import pyplot

    plt = pyplot()

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
