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

    from metabert.deploy.onnx_fused import FUSED_POLICIES

    identity = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 17)])
    empty = ort.InferenceSession(identity.SerializeToString(), runner.session_options(), providers=["CPUExecutionProvider"])
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


