"""What an exit costs inside ONNX Runtime's fused batch-1 graph, probed piece by piece (docs/ENGINE.md,
"An exit inside ONNX Runtime's fused batch-1 graph, split").

Usage: python benchmarks/fused_exit_probe.py FOLDER [--sentences 60] [--rounds 7] [--threads 2]
         [--output results/bench/fused_exit_probe.json]
FOLDER is an exported INT8 folder (`metabert export --checkpoint CKPT --output FOLDER --quantize int8
--no-calibrate`); GLUE_DIR must point at GLUE (SST-2 dev sentences are the inputs).

Three probes, each timed interleaved over ``--rounds`` rounds (medians, µs per sentence):

1. ``if_node``: the embeddings and layers 1-6 of the folder (no exit heads), against the same with
   layers 2-6 each inside the else branch of an ``If`` (in a row, or nested as the fused graph
   nests them): what the ``If`` node itself costs around a layer.
2. ``composition``: the fused graph (``onnx_fused.build``, threshold 0: no exit passes) against its
   work without control flow (``onnx_fused.unrolled``), composed the runner's way (from the
   per-layer graphs as ONNX Runtime optimised them, not optimised again) and optimised whole.
3. ``kernels``: the kernels of an INT8 exit head alone, one per session (less an ``Identity``
   session), on the runner's thread pool (``--threads``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from metabert.common.machine import hardware
from metabert.data.tasks import load_glue
from metabert.deploy.fused_layers import SLOW_FUSIONS
from metabert.deploy.onnx_export import TOKENS
from metabert.deploy.onnx_fused import build, renamed, unrolled
from metabert.deploy.ort_runner import OrtMultiExit


def interleaved(sessions: dict, feeds: list[dict], rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of each session's mean µs per feed, the sessions taking turns."""
    names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
    for k, s in sessions.items():
        for f in feeds[:10]:
            s.run(None, {n: f[n] for n in names[k]})
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            start = time.perf_counter()
            for f in feeds:
                s.run(None, {n: f[n] for n in names[k]})
            times[k].append((time.perf_counter() - start) / len(feeds) * 1e6)
    return {k: float(np.median(v)) for k, v in times.items()}


def layers_with_ifs(graphs: list[onnx.ModelProto], layout: str) -> onnx.ModelProto:
    """Embeddings and every layer (their exit heads unused, so pruned); ``layout``: ``flat``, ``row``
    (layers 2..L each alone in an ``If``'s else branch) or ``nested`` (each ``If``'s else branch
    holds the next layer and the next ``If``). The condition is the input ``go`` (fed false)."""
    embed, layers = graphs[0], graphs[1:]
    nodes, inits, state = renamed(embed.graph, "e/", {n: n for n in TOKENS})

    def value(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    def layer(i, hidden):
        n, it, out = renamed(layers[i].graph, f"l{i + 1}/", {**state, "hidden": hidden})
        return n, it, out["hidden_out"]

    def branch(i, body, body_inits, out):  # If(go): then the input as it is, else body
        then = helper.make_graph([helper.make_node("Identity", [f"in{i}"], [f"then{i}"])], f"then{i}", [],
                                 [value(f"then{i}")])
        otherwise = helper.make_graph(body + [helper.make_node("Identity", [out], [f"else{i}"])], f"else{i}", [],
                                      [value(f"else{i}")], body_inits)
        return helper.make_node("If", ["go"], [f"if{i}"], then_branch=then, else_branch=otherwise)

    n, it, hidden = layer(0, state["hidden"])
    nodes, inits = nodes + n, inits + it
    if layout == "nested":
        def block(i, hidden):
            n, it, out = layer(i, hidden)
            if i == len(layers) - 1:
                return n, it, out
            rest, rest_inits, rest_out = block(i + 1, out)
            return n + [helper.make_node("Identity", [out], [f"in{i}"]), branch(i, rest, rest_inits, rest_out)], it, f"if{i}"
        n, it, hidden = block(1, hidden)
        nodes, inits = nodes + n, inits + it
    else:
        for i in range(1, len(layers)):
            n, it, out = layer(i, hidden)
            if layout == "flat":
                nodes, inits, hidden = nodes + n, inits + it, out
                continue
            nodes += [helper.make_node("Identity", [hidden], [f"in{i}"]), branch(i, n, it, out)]
            hidden = f"if{i}"
    nodes.append(helper.make_node("Identity", [hidden], ["out"]))
    inputs = [i for i in embed.graph.input if i.name in TOKENS] + [helper.make_tensor_value_info("go", TensorProto.BOOL, [])]
    model = helper.make_model(helper.make_graph(nodes, layout, inputs, [value("out")], inits),
                              opset_imports=layers[0].opset_import)
    model.ir_version = embed.ir_version
    return model


def kernel_sessions(options, hidden: int, tokens: int) -> tuple[dict, dict]:
    """One session per kernel of an INT8 exit head, and an ``Identity`` one (``options``: a function
    giving session options); with their feeds."""
    rng = np.random.default_rng(0)

    def session(nodes, inputs, inits):
        graph = helper.make_graph(nodes, "kernel", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        return ort.InferenceSession(model.SerializeToString(), options(), providers=["CPUExecutionProvider"])

    weights = [numpy_helper.from_array(rng.integers(-127, 127, (hidden, hidden)).astype(np.int8), "w"),
               numpy_helper.from_array(np.full(hidden, 0.01, np.float32), "scale"),
               numpy_helper.from_array(np.zeros(hidden, np.int8), "zero"),
               numpy_helper.from_array(np.zeros(hidden, np.float32), "bias")]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    sessions = {
        "identity": session([helper.make_node("Identity", ["x"], ["y"])], [("x", [1, hidden])], []),
        "dense INT8 (DynamicQuantizeMatMul, one row)": session(
            [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "scale", "zero", "bias"], ["y"], domain="com.microsoft")],
            [("x", [1, hidden])], weights),
        "pooling product (Mul)": session([helper.make_node("Mul", ["h", "p"], ["y"])],
                                         [("h", [1, tokens, hidden]), ("p", [1, tokens, 1])], []),
        "pooling sum (ReduceSum)": session([helper.make_node("ReduceSum", ["h", "axis"], ["y"], keepdims=0)],
                                           [("h", [1, tokens, hidden])], [axis]),
        "Tanh": session([helper.make_node("Tanh", ["x"], ["y"])], [("x", [1, hidden])], []),
    }
    feed = {"x": rng.standard_normal((1, hidden)).astype(np.float32),
            "h": rng.standard_normal((1, tokens, hidden)).astype(np.float32),
            "p": np.full((1, tokens, 1), 1 / tokens, np.float32)}
    return sessions, feed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="results/bench/fused_exit_probe.json")
    args = parser.parse_args()

    runner = OrtMultiExit(args.folder, threads=args.threads)
    layers = runner.num_layers
    graphs = [onnx.load(str(Path(args.folder) / n)) for n in runner.meta["graphs"][: 1 + layers]]
    dev = load_glue("sst2", "dev").examples[: args.sentences]  # from $GLUE_DIR
    feeds = [{**runner.feeds({k: v for k, v in runner.tokenizer(e.text, return_tensors="np").items()}),
              "go": np.array(False), "threshold": np.array(0.0, np.float32)} for e in dev]

    def optimised(model):
        return ort.InferenceSession(model.SerializeToString(), runner.session_options(), providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(SLOW_FUSIONS))

    ifs = interleaved({layout: optimised(layers_with_ifs(graphs, layout)) for layout in ("flat", "row", "nested")},
                      feeds, args.rounds)
    composed = interleaved({
        "fused, composed as the runner does": runner.fused_session("entropy", build),
        "unrolled, composed as the runner does": runner.fused_session("entropy", unrolled),
        "fused, optimised whole": optimised(build(graphs, runner.meta, "entropy")),
        "unrolled, optimised whole": optimised(unrolled(graphs, runner.meta, "entropy")),
        "full graph": runner.full_session}, feeds, args.rounds)
    exits = layers - 1
    tokens = round(float(np.mean([f["input_ids"].shape[1] for f in feeds])))
    hidden = graphs[1].graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    sessions, feed = kernel_sessions(runner.session_options, hidden, tokens)
    times = interleaved(sessions, [feed] * 50, args.rounds)
    kernels = {k: v - times["identity"] for k, v in times.items() if k != "identity"}
    out = {
        "date": dt.date.today().isoformat(), "hardware": hardware(), "folder": Path(args.folder).name,
        "sentences": len(feeds), "tokens_mean": tokens, "rounds": args.rounds, "threads": args.threads,
        "if_node_us": ifs, "if_node_per_if_us": {k: (ifs[k] - ifs["flat"]) / exits for k in ("row", "nested")},
        "composition_us": composed,
        "if_per_exit_us": {
            "composed as the runner does": (composed["fused, composed as the runner does"]
                                            - composed["unrolled, composed as the runner does"]) / exits,
            "optimised whole": (composed["fused, optimised whole"] - composed["unrolled, optimised whole"]) / exits},
        "head_and_test_per_exit_us": (composed["unrolled, composed as the runner does"] - composed["full graph"]) / exits,
        "kernels_us": kernels,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2))
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
