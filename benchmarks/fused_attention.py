"""Fused attention in the exported layer graphs (issue 38): speed, accuracy, what each graph runs, a
profile of one INT8 layer, and the machine's lower bounds.

Usage: python benchmarks/fused_attention.py CHECKPOINT [--output results/bench/fused_attention.json]
         [--task sst2] [--timed 200] [--rounds 5] [--threads 2] [--batches 12] [--profile-layer 3]
         (GLUE_DIR set)

Variants, each exported from CHECKPOINT here, fp32 and INT8 (``quantize_export``: dynamic, per
channel, the shipped default), run by ``OrtMultiExit``:
  torch-ortfusions  the earlier export: ``torch.onnx.export`` of each layer (``export(layers="torch")``),
                    ONNX Runtime's default graph fusions (what the runner did before)
  torch             the same graphs, the runner's sessions without the fusions that are slower on
                    CPU (``onnx_runtime.SLOW_FUSIONS``: SkipLayerNormalization, BiasGelu)
  fused             option (a), the default export: each layer written from its weights with the
                    contrib ``Attention`` kernel (``QAttention`` once INT8), Add + LayerNormalization, Gelu
  fused-skipnorms   (a) with ONNX Runtime's ``SkipLayerNormalization`` and ``BiasGelu`` kernels
  mha               (a) with one QKV MatMul, a Split and the contrib ``MultiHeadAttention`` kernel
  lean              (a) with attention in plain ops (one QKV MatMul, the 1/sqrt(d) folded into it)
  optimizer         option (b): layers exported by torch with one scale on QK (an attention function
                    registered for the export) and the (B, T) int mask expanded in the graph, then
                    ``onnxruntime.transformers.optimizer`` (model_type bert; its SkipLayerNorm and
                    BiasGelu fusions off, as they are slower), which then fuses attention

All ONNX Runtime sessions share one intra-op pool of ``--threads`` threads (``OrtMultiExit``).
Timings interleave the variants of one precision input by input, rotating their order; a figure is
the mean over inputs of the median over rounds (``*_min``: of the fastest round, what an input
costs when other processes leave the cores alone). Batch 1: the first ``--timed`` dev sentences;
batch 32: the first ``--batches`` batches of 32 consecutive dev sentences. Writes the JSON and a
markdown page beside it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import math
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from metabert import adapters, metrics
from metabert.adapters import LayerInputs
from metabert.batching import collate, encode, model_inputs
from metabert.calibration import evaluation_set
from metabert.modeling import EagerRunner, MultiExitBert
from metabert.onnx_runtime import (
    META_NAME,
    SLOW_FUSIONS,
    OrtMultiExit,
    _Embed,
    _export,
    _Full,
    check_export,
    export,
)
from metabert.quantize import quantize_export
from metabert.runners import all_exit_logits

VARIANTS = ("torch-ortfusions", "torch", "fused", "fused-skipnorms", "mha", "lean", "optimizer")
BASE = "torch-ortfusions"


# ------------------------------------------------------------------------------ option (b)
def _one_scale_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Scaled dot-product attention written as the ORT optimizer's BERT pattern has it: one Div of
    QK^T by sqrt(d), then the additive mask, softmax, and the context transposed back."""
    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.shape[-1])
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _unsqueezed_mask(attention_mask, dtype):
    """The additive mask as the optimizer's mask pattern has it (Unsqueeze, Unsqueeze, Cast, Sub, Mul)."""
    return (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).to(dtype)) * torch.finfo(dtype).min


class _IntMaskLayer(nn.Module):
    def __init__(self, model, index):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, hidden, mask, pool):
        inputs = LayerInputs(_unsqueezed_mask(mask, hidden.dtype), pool)
        hidden = self.model.run_layer(self.index, hidden, inputs)
        return hidden, self.model.exit_logits(self.index, hidden, inputs)


def export_optimizer_variant(model: MultiExitBert, torch_folder: Path, output: Path) -> dict:
    """Option (b) in ``output`` (the other files from ``torch_folder``); returns each graph's
    ``get_fused_operator_statistics``."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AttentionInterface

    shutil.copytree(torch_folder, output)
    AttentionInterface.register("metabert_one_scale", _one_scale_attention)
    before = model.encoder.config._attn_implementation
    model.encoder.set_attn_implementation("metabert_one_scale")
    tok = model.tokenizer(["an example sentence", "and a second, longer example sentence"], padding=True,
                          return_tensors="pt")
    ids, att = tok["input_ids"], tok["attention_mask"]
    types = tok.get("token_type_ids", torch.zeros_like(ids))
    seq = {0: "batch", 1: "sequence"}
    patched = adapters.additive_mask
    try:
        with torch.no_grad():
            embed = _Embed(model, raw_mask=True)
            _export(embed, (ids, att, types), output / "embeddings.onnx",
                    ["input_ids", "attention_mask", "token_type_ids"], ["hidden", "mask", "pool"],
                    {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "hidden": seq, "mask": seq,
                     "pool": seq})
            hidden, mask, pool = embed(ids, att, types)
            for i in range(model.num_layers):
                _export(_IntMaskLayer(model, i), (hidden, mask, pool), output / f"layer_{i + 1}.onnx",
                        ["hidden", "mask", "pool"], ["hidden_out", "logits"],
                        {"hidden": seq, "mask": seq, "pool": seq, "hidden_out": seq, "logits": {0: "batch"}})
            adapters.additive_mask = _unsqueezed_mask  # what the full model's layer inputs use
            _export(_Full(model), (ids, att, types), output / "full.onnx",
                    ["input_ids", "attention_mask", "token_type_ids"], ["logits"],
                    {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "logits": {0: "batch"}})
    finally:
        adapters.additive_mask = patched
        model.encoder.set_attn_implementation(before)
    config = model.encoder.config
    stats = {}
    for name in [f"layer_{i + 1}.onnx" for i in range(model.num_layers)] + ["full.onnx"]:
        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = options.enable_bias_gelu = False
        optimized = optimize_model(str(output / name), model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=0, optimization_options=options)
        stats[name] = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        # the quantizer needs every tensor's type, which ONNX's own inference does not give contrib ops
        optimized.save_model_to_file(str(output / name))
        typed = SymbolicShapeInference.infer_shapes(onnx.load(str(output / name)), auto_merge=True)
        onnx.save(typed, str(output / name))
    meta = json.loads((output / META_NAME).read_text())
    (output / META_NAME).write_text(json.dumps({**meta, "layers": "optimizer"}, indent=2))
    return stats


# ------------------------------------------------------------------------------ graphs
def op_counts(path: Path) -> dict:
    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def ort_optimized_ops(runtime: OrtMultiExit, name: str, tmp: Path, tag: str) -> dict:
    """The op types of graph ``name`` as ``runtime``'s sessions run it (after ONNX Runtime's graph
    optimisations, with the runner's fusions left out)."""
    target = tmp / f"opt-{tag}-{name}"
    runtime._session(name, runtime._make_options(optimized_path=str(target)))
    return op_counts(target)


def weight_bytes(path: Path, skip_embeddings: bool = False) -> int:
    total = 0
    for init in onnx.load(str(path)).graph.initializer:
        if skip_embeddings and "embeddings" in init.name:
            continue
        total += onnx.numpy_helper.to_array(init).nbytes
    return total


# ------------------------------------------------------------------------------ timing
def rotated(names: list[str], r: int) -> list[str]:
    return names[r % len(names):] + names[: r % len(names)]


def time_calls(runtimes: dict[str, OrtMultiExit], items: list[dict], rounds: int, warmup: int = 10) -> dict:
    """Per variant: (rounds, items) seconds of the full graph, of the embeddings graph and of each
    layer graph's session call (the layer's inputs from that variant's own previous graphs)."""
    names = list(runtimes)
    layers = next(iter(runtimes.values())).num_layers
    out = {n: {"full": np.zeros((rounds, len(items))), "embeddings": np.zeros((rounds, len(items))),
               "layers": np.zeros((rounds, len(items), layers))} for n in names}

    def one(n, inputs, r, j):
        rt = runtimes[n]
        start = time.perf_counter()
        rt.full(inputs)
        t_full = time.perf_counter() - start
        start = time.perf_counter()
        state = rt.start(inputs)
        t_embed = time.perf_counter() - start
        per_layer = []
        for i in range(layers):
            feeds = rt.layer_feeds(i, state)
            start = time.perf_counter()
            hidden, _ = rt.layers[i].run(None, feeds)
            per_layer.append(time.perf_counter() - start)
            state = (hidden, state[1], state[2])
        if r >= 0:
            out[n]["full"][r, j], out[n]["embeddings"][r, j] = t_full, t_embed
            out[n]["layers"][r, j] = per_layer

    for inputs in items[:warmup]:
        for n in names:
            one(n, inputs, -1, -1)
    for r in range(rounds):
        for j, inputs in enumerate(items):
            for n in rotated(names, r + j):
                one(n, inputs, r, j)
    return out


def summarise(times: dict) -> dict:
    """ms, mean over inputs of the median over rounds; ``*_min`` the same with the fastest round of
    each input (what an input costs when no other process takes the cores: on a shared machine the
    median carries other people's load, the minimum much less of it)."""
    layers = times["layers"]
    out = {}
    for suffix, stat in (("", np.median), ("_min", np.min)):
        def ms(a, stat=stat):
            return float(stat(a, 0).mean() * 1e3)

        out.update({f"full_ms{suffix}": ms(times["full"]), f"embeddings_ms{suffix}": ms(times["embeddings"]),
                    f"layer_ms{suffix}": [ms(layers[:, :, i]) for i in range(layers.shape[2])],
                    f"layer_mean_ms{suffix}": float(stat(layers, 0).mean() * 1e3),
                    f"steps_sum_ms{suffix}": ms(times["embeddings"] + layers.sum(2))})
    return out


# ------------------------------------------------------------------------------ profile
def category(name: str, op: str) -> str:
    low = name.lower()
    if "exit" in low or (op in ("Mul", "ReduceSum") and "layer" not in low):  # torch: pooling outside the layer
        return "exit head"
    if op in ("SkipLayerNormalization", "LayerNormalization") or "norm" in low or "residual" in low:
        return "layer norms and residual adds"
    if "attention/output" in low or "attention_output" in low:
        return "attention output projection"
    if op in ("Attention", "QAttention", "Softmax") or "attention" in low or name == "hidden_QuantizeLinear":
        return "attention (QKV projection, scores, context)"
    if op in ("Gelu", "BiasGelu", "FastGelu") or any(k in low for k in ("intermediate", "activation", "output")):
        return "FFN (two projections + GELU)"
    return "other"


def bare_call_us(feeds: list[dict], repeats: int) -> float:
    """Median µs of a session call that does nothing (Identity) on the same inputs as a layer graph:
    the Python call, binding the inputs and returning one output of the hidden state's size."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    first = feeds[0]
    kinds = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    inputs = [helper.make_tensor_value_info(name, kinds[value.dtype], [None] * value.ndim) for name, value in first.items()]
    nodes = [helper.make_node("Identity", ["hidden"], ["hidden_out"])]
    nodes += [helper.make_node("Identity", [name], [f"{name}_out"]) for name in first if name != "hidden"]
    outputs = [helper.make_tensor_value_info(n.output[0], kinds[first[n.input[0]].dtype], None) for n in nodes]
    model = helper.make_model(helper.make_graph(nodes, "bare", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    walls = []
    for _ in range(repeats):
        for f in feeds:
            start = time.perf_counter()
            session.run(["hidden_out"], f)
            walls.append(time.perf_counter() - start)
    return float(np.median(walls) * 1e6)


def profile_layer(path: Path, feeds: list[dict], repeats: int, tmp: Path,
                  disabled: tuple = SLOW_FUSIONS) -> dict:
    """One layer graph at batch 1 under ONNX Runtime's profiler: per run, µs of each kernel summed
    by category, and the run's own time beyond its kernels (the executor between them); medians
    over runs. Beside them the median unprofiled call and the cost of a call that does nothing."""
    import onnxruntime as ort

    def make(profile: bool):
        options = ort.SessionOptions()
        options.use_per_session_threads = False  # the shared pool, as the runners
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(tmp / f"profile-{path.parent.name}")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled))

    session, plain = make(True), make(False)
    for f in feeds[:10]:
        plain.run(None, f)
    walls = []
    for _ in range(repeats):
        for f in feeds:
            session.run(None, f)
            start = time.perf_counter()
            plain.run(None, f)
            walls.append(time.perf_counter() - start)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs, current = [], None
    for e in sorted(events, key=lambda e: e["ts"]):
        if e.get("cat") == "Session" and e["name"] == "model_run":
            # a run's event is written when it ends: its kernels are the ones inside its span
            runs.append({"start": e["ts"], "end": e["ts"] + e["dur"], "dur": e["dur"], "kernels": []})
    runs.sort(key=lambda r: r["start"])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node, op = e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", "")
            current = next((r for r in runs if r["start"] <= e["ts"] <= r["end"]), None)
            if current is not None:
                current["kernels"].append((op, node, e["dur"]))
    runs = [r for r in runs if r["kernels"]][min(10, len(feeds)):]  # without the first calls
    categories = sorted({category(node, op) for r in runs for op, node, _ in r["kernels"]})
    per_cat = {c: float(np.median([sum(d for op, node, d in r["kernels"] if category(node, op) == c) for r in runs]))
               for c in categories}
    kernels = [sum(d for _, _, d in r["kernels"]) for r in runs]
    per_node: dict = collections.defaultdict(list)
    for r in runs:
        for op, node, d in r["kernels"]:
            per_node[f"{op} {node}"].append(d)
    return {"graph": path.name, "runs": len(runs), "kernels_per_run": len(runs[0]["kernels"]) if runs else 0,
            "kernel_us_by_category": dict(sorted(per_cat.items(), key=lambda x: -x[1])),
            "kernel_us_by_node": {k: float(np.median(v)) for k, v in
                                  sorted(per_node.items(), key=lambda x: -float(np.median(x[1])))},
            "kernels_us": float(np.median(kernels)),
            "executor_us": float(np.median([r["dur"] - k for r, k in zip(runs, kernels)])),
            "profiled_run_us": float(np.median([r["dur"] for r in runs])),
            "unprofiled_call_us": float(np.median(walls) * 1e6),
            "unprofiled_call_us_min": float(np.min(walls) * 1e6),
            "bare_call_us": bare_call_us(feeds, repeats)}


# ------------------------------------------------------------------------------ machine limits
def read_bandwidth(nbytes: int, threads: int, repeats: int = 20) -> float:
    """GB/s reading ``nbytes`` of float32: the fastest of numpy's sum, dot and max over them, on 1 and
    on ``threads`` threads (numpy releases the GIL). The cores may read faster than numpy does, so a
    time derived from this is an upper estimate of the true memory time."""
    data = np.ones(nbytes // 4, dtype=np.float32)
    best = math.inf
    for reader in (np.sum, np.max, lambda a: np.dot(a, a)):
        for count in sorted({1, threads}):
            parts = np.array_split(data, count)
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(reader, parts))
                for _ in range(repeats):
                    start = time.perf_counter()
                    list(pool.map(reader, parts))
                    best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def matmul_rate(m: int, k: int, n: int, integer: bool, seconds: float = 1.0) -> float:
    """Multiply-accumulates per second of one ONNX Runtime MatMulInteger (uint8 x int8 -> int32) or
    fp32 MatMul of (m, k) x (k, n), B a constant, in the shared pool."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        b = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "B")
        a_zero = numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero")
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero"], ["Y"])
        inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])]
        inits, out_type = [b, a_zero], TensorProto.INT32
        feed = rng.integers(0, 255, (m, k), dtype=np.uint8)
    else:
        b = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])]
        inits, out_type = [b], TensorProto.FLOAT
        feed = rng.standard_normal((m, k), dtype=np.float32)
    graph = helper.make_graph([node], "mm", inputs, [helper.make_tensor_value_info("Y", out_type, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, {"A": feed})
    count, start = 0, time.perf_counter()
    best = math.inf
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        session.run(None, {"A": feed})
        best = min(best, time.perf_counter() - t)
        count += 1
    return m * k * n / best


def cpu_info() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
                 platform.processor())
    words = set(flags.split())
    return {"model": model, "cores": os.cpu_count(),
            "flags": {f: f in words for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16")}}


# ------------------------------------------------------------------------------ main
def export_variants(model: MultiExitBert, checkpoint: str, tmp: Path) -> tuple[dict, dict]:
    """{variant-precision: folder} and the optimizer's fused-operator statistics (option b)."""
    fp32 = {"torch": export(model, checkpoint, tmp / "torch-fp32", layers="torch"),
            "fused": export(model, checkpoint, tmp / "fused-fp32"),
            "fused-skipnorms": export(model, checkpoint, tmp / "fused-skipnorms-fp32", skip_norms=True),
            "mha": export(model, checkpoint, tmp / "mha-fp32", attention="MultiHeadAttention"),
            "lean": export(model, checkpoint, tmp / "lean-fp32", attention="lean")}
    stats = export_optimizer_variant(model, fp32["torch"], tmp / "optimizer-fp32")
    fp32["optimizer"] = tmp / "optimizer-fp32"
    folders = {}
    for name, folder in fp32.items():
        folders[f"{name}-fp32"] = folder
        folders[f"{name}-int8"] = quantize_export(folder, tmp / f"{name}-int8")
    for precision in ("fp32", "int8"):  # the same graphs, run with ONNX Runtime's default fusions
        folders[f"torch-ortfusions-{precision}"] = folders[f"torch-{precision}"]
    return folders, stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--output", default="results/bench/fused_attention.json")
    parser.add_argument("--task", default=None)
    parser.add_argument("--timed", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--profile-layer", type=int, default=3, help="1-based layer to profile")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.time()
    model = MultiExitBert.from_pretrained(args.checkpoint).eval()
    task, spec, dev = evaluation_set(model, args.task, "dev")
    enc = encode(dev, model.tokenizer, 128)
    pad = model.tokenizer.pad_token_id
    tmp = Path(tempfile.mkdtemp(prefix="metabert-fused-bench-"))
    report = {"checkpoint": Path(args.checkpoint).name, "task": task, "examples": len(enc.labels),
              "date": dt.date.today().isoformat(), "cpu": cpu_info(), "threads": args.threads,
              "command": "python benchmarks/fused_attention.py CHECKPOINT " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k not in ("checkpoint", "output") and v is not None),
              "load_average_start": os.getloadavg()[0]}
    try:
        import onnxruntime
        import transformers

        report["versions"] = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                              "torch": torch.__version__, "transformers": transformers.__version__}
        # ------------------------------------------------------------------ export every variant
        folders, report["optimizer_fused_operator_statistics"] = export_variants(model, args.checkpoint, tmp)
        runtimes = {f"{v}-{p}": OrtMultiExit(folders[f"{v}-{p}"], threads=args.threads,
                                             **({"disabled_fusions": ()} if v == BASE else {}))
                    for p in ("fp32", "int8") for v in VARIANTS}
        # ------------------------------------------------------------------ graphs: what runs
        graphs = {}
        files = [f"layer_{i + 1}.onnx" for i in range(model.num_layers)] + ["full.onnx"]
        for name, rt in runtimes.items():
            folder = folders[name]
            saved = {f: op_counts(folder / f) for f in files}
            optimized = {f: ort_optimized_ops(rt, f, tmp, name) for f in files}
            attention = "QAttention" if name.endswith("int8") else "Attention"
            fused_kernel = ("MultiHeadAttention",) if name.startswith("mha") else (attention,)
            graphs[name] = {
                "fused_attention_in_every_graph": all(
                    sum(optimized[f].get(k, 0) for k in fused_kernel) == (model.num_layers if f == "full.onnx" else 1)
                    for f in files),
                "layer_1_saved_ops": saved["layer_1.onnx"],
                "layer_1_ort_ops": optimized["layer_1.onnx"],
                "layer_nodes_saved": [sum(saved[f].values()) for f in files[:-1]],
                "layer_nodes_ort": [sum(optimized[f].values()) for f in files[:-1]],
                "full_nodes_saved": sum(saved["full.onnx"].values()),
                "full_nodes_ort": sum(optimized["full.onnx"].values()),
                "full_ort_ops": optimized["full.onnx"],
                "graphs_mb": sum(f.stat().st_size for f in folder.glob("*.onnx")) / 2**20}
        report["graphs"] = graphs
        # ------------------------------------------------------------------ accuracy and parity
        eager = all_exit_logits(EagerRunner(model), enc, pad)
        accuracy = {"eager-fp32": {"per_exit": [metrics.compute(spec.metric, eager[i].argmax(-1).tolist(),
                                                                enc.labels)["score"] for i in range(model.num_layers)]}}
        order = list(range(len(enc.labels)))
        for name, rt in runtimes.items():
            if name.startswith(BASE):  # the same graphs as "torch": same logits (below)
                continue
            logits = all_exit_logits(rt, enc, pad)
            full = torch.cat([rt.full(model_inputs(collate(enc, order[s:s + 64], pad)))
                              for s in range(0, len(order), 64)])
            accuracy[name] = {
                "per_exit": [metrics.compute(spec.metric, logits[i].argmax(-1).tolist(), enc.labels)["score"]
                             for i in range(model.num_layers)],
                "full": metrics.compute(spec.metric, full.argmax(-1).tolist(), enc.labels)["score"],
                "max_abs_logit_diff_vs_eager_every_exit": float((logits - eager).abs().max()),
                "max_abs_logit_diff_vs_eager_full": float((full - eager[-1]).abs().max()),
                "agreement_with_eager_full": float((full.argmax(-1) == eager[-1].argmax(-1)).float().mean())}
            if name.endswith("fp32"):
                accuracy[name]["check_export"] = check_export(model, rt)
        for precision in ("fp32", "int8"):
            accuracy[f"{BASE}-{precision}"] = accuracy[f"torch-{precision}"]
        report["accuracy"] = accuracy
        # ------------------------------------------------------------------ speed, interleaved
        singles = [model_inputs(collate(enc, [i], pad)) for i in range(min(args.timed, len(order)))]
        report["mean_tokens_batch1"] = float(np.mean([int(s["attention_mask"].sum()) for s in singles]))
        batches = [model_inputs(collate(enc, order[s:s + args.batch], pad))
                   for s in range(0, len(order) - args.batch + 1, args.batch)][: args.batches]
        report["mean_padded_length_batchN"] = float(np.mean([b["input_ids"].shape[1] for b in batches]))
        speed = {}
        for label, items in (("batch1", singles), (f"batch{args.batch}", batches)):
            speed[label] = {}
            for precision in ("fp32", "int8"):
                group = {n: rt for n, rt in runtimes.items() if n.endswith(precision)}
                times = time_calls(group, items, args.rounds)
                speed[label].update({n: summarise(t) for n, t in times.items()})
                base = speed[label][f"{BASE}-{precision}"]
                for n in group:
                    row = speed[label][n]
                    row["speedup_vs_torch_ortfusions"] = {
                        k: base[k] / row[k] for k in ("full_ms", "layer_mean_ms", "steps_sum_ms", "full_ms_min",
                                                      "layer_mean_ms_min", "steps_sum_ms_min")}
                    if label != "batch1":
                        row["full_sentences_per_s"] = args.batch / row["full_ms"] * 1e3
        report["speed"] = speed
        # ------------------------------------------------------------------ profile of one INT8 layer
        index = args.profile_layer - 1
        profiles = {}
        for name in ("fused-int8", f"{BASE}-int8"):
            rt = runtimes[name]
            feeds = []
            for inputs in singles:
                state = rt.start(inputs)
                for i in range(index):
                    state, _ = rt.step(i, state)
                feeds.append(rt.layer_feeds(index, state))
            profiles[name] = profile_layer(folders[name] / f"layer_{index + 1}.onnx", feeds, args.rounds, tmp,
                                           () if name.startswith(BASE) else SLOW_FUSIONS)
        report["profile_batch1"] = profiles
        # ------------------------------------------------------------------ lower bounds
        tokens = report["mean_tokens_batch1"]
        config = model.encoder.config
        hidden, inter = config.hidden_size, config.intermediate_size
        labels = model.config.num_labels
        head_macs = (hidden * hidden if model.config.head == "pooler" else 0) + hidden * labels
        int8_macs = tokens * (4 * hidden * hidden + 2 * hidden * inter) + head_macs
        fp32_macs = 2 * tokens * tokens * hidden  # scores and context stay fp32 in QAttention
        layer_bytes = weight_bytes(folders["fused-int8"] / f"layer_{index + 1}.onnx")
        encoder_bytes = weight_bytes(folders["fused-int8"] / "full.onnx", skip_embeddings=True)
        limits = {"read_GBps_l3_sized": read_bandwidth(max(encoder_bytes, 8 << 20), args.threads),
                  "read_GBps_dram_sized": read_bandwidth(1 << 30, args.threads, repeats=3),
                  "int8_macs_per_s_big": matmul_rate(512, 1536, 1536, True),
                  "fp32_macs_per_s_big": matmul_rate(512, 1536, 1536, False),
                  "int8_macs_per_s_layer_shape": matmul_rate(max(1, round(tokens)), hidden, inter, True),
                  "fp32_macs_per_s_layer_shape": matmul_rate(max(1, round(tokens)), hidden, inter, False)}
        compute_us = (int8_macs / limits["int8_macs_per_s_big"] + fp32_macs / limits["fp32_macs_per_s_big"]) * 1e6
        compute_shape_us = (int8_macs / limits["int8_macs_per_s_layer_shape"]
                            + fp32_macs / limits["fp32_macs_per_s_layer_shape"]) * 1e6
        memory_us = layer_bytes / (limits["read_GBps_l3_sized"] * 1e9) * 1e6
        measured = {n: speed["batch1"][n]["layer_ms_min"][index] * 1e3 for n in ("fused-int8", f"{BASE}-int8")}
        bound = max(compute_us, memory_us)
        report["lower_bound_batch1_layer"] = {
            "layer": index + 1, "tokens": tokens, "int8_macs": int8_macs, "fp32_macs": fp32_macs,
            "int8_weight_bytes": layer_bytes, "encoder_int8_weight_bytes_full_graph": encoder_bytes,
            "machine": limits, "compute_us_at_big_matmul_rate": compute_us,
            "compute_us_at_layer_shape_rate": compute_shape_us, "memory_us_from_l3": memory_us,
            "bound_us": bound, "measured_layer_call_us": measured,
            "measured_over_bound": {n: v / bound for n, v in measured.items()},
            "full_model_bound_us": max(encoder_bytes / (limits["read_GBps_l3_sized"] * 1e9) * 1e6,
                                       model.num_layers * compute_us),
            "full_model_measured_us": {n: speed["batch1"][n]["full_ms_min"] * 1e3
                                       for n in ("fused-int8", f"{BASE}-int8")}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()[0]
    report["seconds"] = time.time() - started
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(page(report))
    print(page(report))


def page(r: dict) -> str:
    cpu = r["cpu"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on)
    lines = [f"# Fused attention in the exported layer graphs ({r['date']})", "",
             (f"Generated by `{r['command']}` on {cpu['model']} ({cpu['cores']} cores; {flags}), "
              f"{r['threads']} ONNX Runtime threads, {r['task']} dev ({r['examples']} examples), "
              f"load average {r['load_average_start']:.1f} at the start and {r['load_average_end']:.1f} at the end. "
              f"Batch-1 sentences: {r['mean_tokens_batch1']:.1f} tokens on average."), "",
             ("| graphs | fused attention in every graph | nodes per layer graph (saved / as ORT runs it) | "
              "full-graph accuracy | max abs logit diff vs PyTorch (every exit) |"), "|---|---|---|---|---|"]
    for name, g in r["graphs"].items():
        a = r["accuracy"][name]
        lines.append(f"| {name} | {'yes' if g['fused_attention_in_every_graph'] else 'no'} | "
                     f"{g['layer_nodes_saved'][0]} / {g['layer_nodes_ort'][0]} | {a['full']:.2f} | "
                     f"{a['max_abs_logit_diff_vs_eager_every_exit']:.2e} |")
    lines.append(f"| eager PyTorch fp32 | | | {r['accuracy']['eager-fp32']['per_exit'][-1]:.2f} | |")
    for label, rows in r["speed"].items():
        lines += ["", f"## {label}: ms per call", "",
                  "Each cell: mean over inputs of the median over rounds / of the fastest round.", "",
                  ("| graphs | full graph | embeddings | mean layer graph | embeddings + every layer | "
                   "full vs torch-ortfusions | layer vs torch-ortfusions |"), "|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            ratio = row["speedup_vs_torch_ortfusions"]
            cells = [f"{row[k]:.3f} / {row[k + '_min']:.3f}" for k in ("full_ms", "embeddings_ms", "layer_mean_ms",
                                                                       "steps_sum_ms")]
            cells += [f"{ratio[k]:.2f}x / {ratio[k + '_min']:.2f}x" for k in ("full_ms", "layer_mean_ms")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lb = r["lower_bound_batch1_layer"]
    lines += ["", f"## Profile of INT8 layer {lb['layer']} at batch 1 (µs per call, ONNX Runtime profiler)", ""]
    for name, p in r["profile_batch1"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in p["kernel_us_by_category"].items())
        lines.append(f"- {name} ({p['kernels_per_run']} kernels; medians over {p['runs']} runs): {parts}; all kernels "
                     f"{p['kernels_us']:.1f}, the executor between them {p['executor_us']:.1f} (profiled run "
                     f"{p['profiled_run_us']:.1f}); unprofiled call {p['unprofiled_call_us']:.1f}, of which a call "
                     f"that does nothing with the same inputs costs {p['bare_call_us']:.1f}")
    m = lb["machine"]
    lines += ["", "## Lower bound of that layer", "",
              (f"{lb['int8_macs'] / 1e6:.2f} M INT8 MACs + {lb['fp32_macs'] / 1e6:.3f} M fp32 MACs, "
               f"{lb['int8_weight_bytes'] / 2**20:.2f} MiB of weights. Measured: read bandwidth "
               f"{m['read_GBps_l3_sized']:.1f} GB/s (working set the size of the INT8 encoder, in cache) and "
               f"{m['read_GBps_dram_sized']:.1f} GB/s (1 GiB); MatMulInteger {m['int8_macs_per_s_big'] / 1e9:.1f} "
               f"GMAC/s (512x1536x1536), {m['int8_macs_per_s_layer_shape'] / 1e9:.1f} GMAC/s at the layer's FFN "
               f"shape; fp32 MatMul {m['fp32_macs_per_s_big'] / 1e9:.1f} GMAC/s."), "",
              (f"Bound: compute {lb['compute_us_at_big_matmul_rate']:.1f} µs (at the layer's shape "
               f"{lb['compute_us_at_layer_shape_rate']:.1f}), weights from cache {lb['memory_us_from_l3']:.1f} µs; "
               "measured " + ", ".join(f"{n} {v:.1f} µs ({lb['measured_over_bound'][n]:.1f}x the bound)"
                                       for n, v in lb["measured_layer_call_us"].items())
               + " (the layer graph's session call, fastest round, its exit head included)."), "",
              (f"The full INT8 graph at batch 1: bound {lb['full_model_bound_us']:.0f} µs (every INT8 weight of the "
               f"encoder and last exit, {lb['encoder_int8_weight_bytes_full_graph'] / 2**20:.1f} MiB, read from cache "
               "once, or the six layers' arithmetic, whichever is longer); measured "
               + ", ".join(f"{n} {v:.0f} µs ({v / lb['full_model_bound_us']:.1f}x)"
                           for n, v in lb["full_model_measured_us"].items()) + "."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
