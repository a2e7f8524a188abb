"""Where batch-1 time goes: each piece of the early-exit path timed on its own (eager PyTorch and
ONNX Runtime), and the cost of an exit inside the real loop."""

from __future__ import annotations

import time

import numpy as np
import torch

from metabert.engine import loop as engine
from metabert.engine.policies import ThresholdPolicy


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

    from metabert.deploy.onnx_fused import FUSED_POLICIES, unrolled

    identity = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 17)])
    empty = ort.InferenceSession(identity.SerializeToString(), runner.session_options(), providers=["CPUExecutionProvider"])
    if policy.name in FUSED_POLICIES:  # the fused graph's work, no control flow: heads; heads and tests
        heads = runner.fused_session(policy.name, lambda *a: unrolled(*a, tests=False))
        tests = runner.fused_session(policy.name, unrolled)
    sample = singles[:count]
    out = {"examples": len(sample), "tokens_mean": float(np.mean([int(s["input_ids"].shape[1]) for s in sample]))}
    sums: dict[str, float] = {}
    for inputs in sample:
        feeds = runner.feeds(inputs)
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
            "feeds_copy": lambda: runner.feeds(inputs),
            "empty_session_call": lambda: empty.run(None, {"x": hidden}),
            "fused_early_exit_call": lambda: engine.run(runner, inputs, policy),
            "stepped_early_exit": lambda: stepped(runner, inputs, policy),
        }
        if policy.name in FUSED_POLICIES:
            never = policy.never_exits()
            pieces["fused_never_exit_call"] = lambda: engine.run(runner, inputs, never)
            threshold = {**feeds, "threshold": np.array(never.threshold, dtype=np.float32)}
            pieces["unrolled_heads_call"] = lambda: heads.run(None, threshold)
            pieces["unrolled_heads_tests_call"] = lambda: tests.run(None, threshold)
        for name, fn in pieces.items():
            sums[name] = sums.get(name, 0.0) + _per_call_us(fn, repeats)
    out.update({k + "_us": v / len(sample) for k, v in sums.items()})
    if "fused_never_exit_call_us" in out:  # the full graph has one exit, the fused one every exit
        exits = runner.num_layers - 1
        out["fused_cost_per_exit_us"] = (out["fused_never_exit_call_us"] - out["full_graph_call_us"]) / exits
        # that cost split: the exit head, its test, and the If (the rest of the graph run in its branch)
        out["exit_head_in_graph_us"] = (out["unrolled_heads_call_us"] - out["full_graph_call_us"]) / exits
        out["exit_test_in_graph_us"] = (out["unrolled_heads_tests_call_us"] - out["unrolled_heads_call_us"]) / exits
        out["control_flow_per_exit_us"] = (out["fused_never_exit_call_us"] - out["unrolled_heads_tests_call_us"]) / exits
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


def stepped(runner, inputs, policy):
    """The engine's early exit layer by layer, without the runner's one-call graphs (``fused``)."""
    fused, runner.fused = runner.fused, False
    try:
        return engine.run(runner, inputs, policy)
    finally:
        runner.fused = fused




def profile_rows(runner, batches: list[dict], rows=(32, 16, 8, 4, 2, 1), index: int = 1, repeats: int = 10) -> dict:
    """What one layer step (layer ``index`` with its exit) costs per row as rows leave a batch: over
    the padded ``batches``, the step on R of each batch's rows for every R in ``rows`` no larger than
    the batch (its longest row always among them, so no padding is cut and only R changes), µs per
    row, and per row against the whole batch. Early exit at batch B runs its deeper layers on the
    rows still there; where a step's fixed cost is large, each of them costs more than at full
    batch, which the layer speed-up does not count."""
    totals: dict[int, float] = {}
    counts: dict[int, int] = {}
    for inputs in batches:
        size = int(inputs["input_ids"].shape[0])
        lengths = inputs["attention_mask"].sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)  # the longest row first
        state = runner.start(inputs)
        for r in [r for r in rows if r <= size]:
            keep = torch.zeros(size, dtype=torch.bool)
            keep[order[:r]] = True
            sub = state if r == size else runner.select(state, keep)
            totals[r] = totals.get(r, 0.0) + _per_call_us(lambda: runner.step(index, sub), repeats) / r
            counts[r] = counts.get(r, 0) + 1
    per_row = {r: totals[r] / counts[r] for r in sorted(totals, reverse=True)}
    full = per_row[max(per_row)]
    return {"layer": index + 1, "batches": len(batches), "rows": list(per_row), "per_row_us": list(per_row.values()),
            "vs_full_batch": [v / full for v in per_row.values()]}

# the kernels of an exported layer graph, by what they compute (names from metabert.deploy.fused_layers
# and from torch.onnx.export of a transformers layer; the exit head sits under "exit/" or "exits.")
KERNEL_GROUPS = ("attention (QKV projection, scores, context)", "attention output projection",
                 "FFN (two projections + activation)", "layer norms and residual adds", "exit head", "other")


def _group(node: str, op: str) -> str:
    low = node.lower()
    if "exit" in low or "pool" in low:
        return KERNEL_GROUPS[4]
    if "norm" in low or "residual" in low or op in ("LayerNormalization", "SkipLayerNormalization"):
        return KERNEL_GROUPS[3]
    if "attention_output" in low or "attention/output" in low:
        return KERNEL_GROUPS[1]
    if op in ("Attention", "QAttention", "Softmax") or "attention" in low or low.startswith("hidden_quantize"):
        return KERNEL_GROUPS[0]
    if op in ("Gelu", "FastGelu", "BiasGelu") or any(k in low for k in ("intermediate", "activation", "output")):
        return KERNEL_GROUPS[2]
    return KERNEL_GROUPS[5]


def layer_kernels(runner, singles: list[dict], index: int = 1, count: int = 100, repeats: int = 5) -> dict:
    """One layer graph of an ``OrtMultiExit`` (layer ``index`` 0-based, with its exit) at batch 1 under
    ONNX Runtime's profiler, over the first ``count`` examples: per run, µs of its kernels summed by
    ``KERNEL_GROUPS`` and the run's time between kernels (the executor); medians over runs. Beside
    them, the median unprofiled call (the profiler inflates each kernel, so the groups' sum can exceed
    it)."""
    import json
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    from metabert.deploy.fused_layers import SLOW_FUSIONS

    feeds = []
    for inputs in singles[:count]:
        state = runner.start(inputs)
        for i in range(index):
            state, _ = runner.step(i, state)
        feeds.append(runner.layer_feeds(index, state))
    name = runner.meta["graphs"][1 + index]
    with tempfile.TemporaryDirectory(prefix="metabert-profile-") as tmp:
        options = runner.session_options()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "layer")
        session = ort.InferenceSession(str(runner.directory / name), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(SLOW_FUSIONS))
        walls = []
        for f in feeds[:10]:
            session.run(None, f)
        for _ in range(repeats):
            for f in feeds:
                start = time.perf_counter()
                runner.layers[index].run(None, f)
                walls.append(time.perf_counter() - start)
                session.run(None, f)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(({"start": e["ts"], "end": e["ts"] + e["dur"], "dur": e["dur"], "kernels": []} for e in events
                   if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda r: r["start"])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            run = next((r for r in runs if r["start"] <= e["ts"] <= r["end"]), None)
            if run is not None:
                run["kernels"].append((e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", ""), e["dur"]))
    runs = [r for r in runs if r["kernels"]][10:]  # without the warm-up calls
    groups = {g: float(np.median([sum(d for node, op, d in r["kernels"] if _group(node, op) == g) for r in runs]))
              for g in KERNEL_GROUPS}
    kernels = [sum(d for _, _, d in r["kernels"]) for r in runs]
    ops = sorted({op for r in runs for _, op, _ in r["kernels"]})
    return {"graph": name, "examples": len(feeds), "runs": len(runs), "hidden": int(feeds[0]["hidden"].shape[-1]),
            "tokens_mean": float(np.mean([f["hidden"].shape[1] for f in feeds])),
            "kernels_per_run": len(runs[0]["kernels"]) if runs else 0, "ops": ops,
            "kernel_us": {g: v for g, v in groups.items() if v > 0},
            "executor_us": float(np.median([r["dur"] - k for r, k in zip(runs, kernels)])),
            "unprofiled_call_us": float(np.median(walls) * 1e6)}


def _matmul_rate(m: int, k: int, n: int, integer: bool, session_options, seconds: float = 0.5) -> float:
    """Multiply-accumulates per second of one ONNX Runtime ``MatMulInteger`` (uint8 x int8) or fp32
    ``MatMul`` of (m, k) x (k, n), B a constant, fastest call."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        inits = [numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "B"),
                 numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero")]
        node, kind = helper.make_node("MatMulInteger", ["A", "B", "zero"], ["Y"]), TensorProto.UINT8
        feed, out = rng.integers(0, 255, (m, k), dtype=np.uint8), TensorProto.INT32
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "B")]
        node, kind = helper.make_node("MatMul", ["A", "B"], ["Y"]), TensorProto.FLOAT
        feed, out = rng.standard_normal((m, k), dtype=np.float32), TensorProto.FLOAT
    graph = helper.make_graph([node], "matmul", [helper.make_tensor_value_info("A", kind, [m, k])],
                              [helper.make_tensor_value_info("Y", out, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    best, begin = float("inf"), time.perf_counter()
    while time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        session.run(None, {"A": feed})
        best = min(best, time.perf_counter() - start)
    return m * k * n / best


def _read_rate(nbytes: int, repeats: int = 20) -> float:
    """Bytes per second numpy's sum reads from a float32 array of ``nbytes`` (fastest pass; the cores
    may read faster than numpy does, so a time derived from it is an upper estimate)."""
    data = np.ones(max(nbytes, 1 << 20) // 4, dtype=np.float32)
    data.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def layer_bound(runner, tokens: float, hidden: int, index: int = 1) -> dict:
    """The least time one layer graph (``index``, with its exit) can take on this machine at batch 1,
    ``tokens`` positions and hidden size ``hidden``: reading its weights once (their bytes over numpy's
    read rate of an array the size of the whole encoder's weights) or doing its arithmetic (every
    weight matrix once per token, at ONNX Runtime's best MatMulInteger rate at the largest matrix's
    shape for an INT8 graph, MatMul's for fp32, plus the attention scores and context in fp32),
    whichever is longer. Any family: the shapes come from the graph's own weights."""
    import onnx

    model = onnx.load(str(runner.directory / runner.meta["graphs"][1 + index]))
    arrays = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer]
    weights = sum(a.nbytes for a in arrays)
    matrices = [a.shape for a in arrays if a.ndim == 2]
    t = max(1, round(tokens))
    int8 = runner.meta.get("precision") == "int8"
    projections = t * sum(int(r) * int(c) for r, c in matrices)
    attention = 2 * t * t * hidden
    k, n = max(matrices, key=lambda shape: shape[0] * shape[1])
    rate = _matmul_rate(t, int(k), int(n), int8, runner.session_options)
    fp32_rate = rate if not int8 else _matmul_rate(t, int(k), int(n), False, runner.session_options)
    read = _read_rate(weights * runner.num_layers)
    memory_us, compute_us = weights / read * 1e6, (projections / rate + attention / fp32_rate) * 1e6
    return {"tokens": t, "weight_bytes": weights, "read_gb_s": read / 1e9, "macs": projections + attention,
            "projection_gmac_s": rate / 1e9, "fp32_gmac_s": fp32_rate / 1e9, "memory_us": memory_us,
            "compute_us": compute_us, "bound_us": max(memory_us, compute_us)}
