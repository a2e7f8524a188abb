"""Layer graphs written with ONNX Runtime's fused attention (``metabert.deploy.fused_layers``): every
layer graph and the full graph carry it (fp32 ``Attention``, INT8 ``QAttention``), logits match
PyTorch with padding for each pooling, exit head and activation, the runner's sessions keep ONNX
Runtime's slower fusions out, and layers the kernels do not cover are exported through torch.
(Every family and retrofitted classifier head: tests/test_onnx_families.py.)"""

import collections
import json

import pytest
import torch
from conftest import make_tiny

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from metabert.deploy import fused_layers  # noqa: E402
from metabert.deploy.onnx_export import META_NAME, check_export, export  # noqa: E402
from metabert.deploy.ort_runner import OrtMultiExit, session_options  # noqa: E402
from metabert.deploy.quantize import quantize_export  # noqa: E402
from metabert.model.multi_exit import MultiExitBert  # noqa: E402

SENTENCES = ["a delightful , moving film that is great fun from start to finish", "dull", "a mess , but fun",
             "wonderful acting and a story that never lets go of you , even when it stumbles", "not bad at all"]


def ops(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def assert_fused(folder, num_layers: int, attention: str = "Attention"):
    """Each layer graph holds one fused attention, no softmax and its two layer norms; the full graph
    one attention per layer."""
    for i in range(num_layers):
        counts = ops(folder / f"layer_{i + 1}.onnx")
        assert counts[attention] == 1 and counts["Softmax"] == 0, counts
        assert counts["LayerNormalization"] == 2, counts
    full = ops(folder / "full.onnx")
    assert full[attention] == num_layers and full["Softmax"] == 0, full


def optimized_ops(folder, name, disabled=fused_layers.SLOW_FUSIONS) -> collections.Counter:
    """The op types of graph ``name`` after ONNX Runtime's graph optimisations, with ``disabled`` off."""
    import onnxruntime as ort

    target = folder.parent / f"{folder.name}-{name}.optimized.onnx"
    ort.InferenceSession(str(folder / name), session_options(optimized_path=str(target)),
                         providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
    return ops(target)


@pytest.mark.parametrize("pooling,head", [("mean", "pooler"), ("mean", "linear"), ("cls", "pooler"), ("cls", "linear")])
def test_fused_layers_match_pytorch_for_each_pooling_and_head(tmp_path, pooling, head):
    model = make_tiny(pooling=pooling, head=head)
    folder = export(model, None, tmp_path)
    meta = json.loads((folder / META_NAME).read_text())
    assert meta["layers"] == "fused" and meta["state"]["mask"]["sequence_axes"] == [1]
    assert_fused(folder, model.num_layers)
    runtime = OrtMultiExit(folder)
    assert ("pool" in runtime._layer_inputs[0]) == (pooling == "mean")
    assert check_export(model, runtime) < 1e-4  # every exit and the full graph, on a padded batch


def test_padded_rows_give_the_logits_they_give_alone(tiny_model, tmp_path):
    runtime = OrtMultiExit(export(tiny_model, None, tmp_path))
    enc = dict(tiny_model.tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    assert not enc["attention_mask"].all()
    with torch.inference_mode():
        ref = tiny_model.full_logits(**enc)
    torch.testing.assert_close(runtime.full(enc), ref, atol=1e-5, rtol=0)
    length = int(enc["attention_mask"][1].sum())
    alone = {k: v[1:2, :length] for k, v in enc.items()}
    torch.testing.assert_close(runtime.full(alone)[0], ref[1], atol=1e-5, rtol=0)


def test_sessions_keep_onnx_runtime_from_fusing_the_layer_norms(tiny_model, tmp_path):
    """Left to its defaults ONNX Runtime fuses Add + LayerNormalization into SkipLayerNormalization
    and Add + Gelu into BiasGelu, both slower on CPU (``SLOW_FUSIONS``); with them off the plain ops
    stay."""
    folder = export(tiny_model, None, tmp_path / "fused")
    kept = optimized_ops(folder, "layer_1.onnx")
    assert kept["LayerNormalization"] == 2 and kept["SkipLayerNormalization"] == 0 and kept["BiasGelu"] == 0, kept
    assert optimized_ops(folder, "layer_1.onnx", disabled=())["SkipLayerNormalization"] == 2


@pytest.mark.parametrize("act,kernel", [("gelu_new", "FastGelu"), ("relu", "Relu"), ("silu", "Sigmoid")])
def test_other_activations_are_written_with_their_kernel(act, kernel, tmp_path):
    from transformers.activations import ACT2FN

    model = make_tiny()
    model.encoder.config.hidden_act = act
    for layer in model.encoder.encoder.layer:
        layer.intermediate.intermediate_act_fn = ACT2FN[act]
    folder = export(model, None, tmp_path)
    assert ops(folder / "layer_1.onnx")[kernel] >= 1
    assert check_export(model, OrtMultiExit(folder)) < 1e-4


def test_layers_the_kernels_do_not_cover_are_exported_through_torch(tmp_path):
    from transformers.activations import ACT2FN

    model = make_tiny()
    model.encoder.config.hidden_act = "gelu_10"  # clipped GELU: no kernel here
    for layer in model.encoder.encoder.layer:
        layer.intermediate.intermediate_act_fn = ACT2FN["gelu_10"]
    assert "gelu_10" in fused_layers.unsupported(model)
    folder = export(model, None, tmp_path)
    assert json.loads((folder / META_NAME).read_text())["layers"] == "torch"
    assert ops(folder / "layer_1.onnx")["Attention"] == 0
    assert check_export(model, OrtMultiExit(folder)) < 1e-4


def test_torch_layers_on_request_and_unknown_option_refused(tiny_model, tmp_path):
    folder = export(tiny_model, None, tmp_path, layers="torch")
    counts = ops(folder / "layer_1.onnx")
    assert counts["Softmax"] == 1 and counts["Attention"] == 0
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(folder / "full.onnx")).graph.node)
    assert check_export(tiny_model, OrtMultiExit(folder)) < 1e-4
    with pytest.raises(ValueError, match="layers must be one of"):
        export(tiny_model, None, tmp_path / "x", layers="fast")


@pytest.fixture(scope="module")
def minilm():
    return MultiExitBert.from_backbone("minilm-l6", ["neg", "pos"], seed=0).eval()


def test_minilm_fused_fp32_matches_and_int8_runs_quantized_attention(minilm, tmp_path):
    fp32 = export(minilm, None, tmp_path / "fp32")
    assert_fused(fp32, minilm.num_layers)
    runtime = OrtMultiExit(fp32)
    assert check_export(minilm, runtime) < 1e-4
    int8 = quantize_export(fp32, tmp_path / "int8")
    assert_fused(int8, minilm.num_layers, attention="QAttention")
    counts = ops(int8 / "layer_1.onnx")
    assert counts["MatMulInteger"] >= 2 and counts["MatMul"] == 0, counts  # the FFN projections are INT8 too
    quantized = OrtMultiExit(int8)
    texts = SENTENCES * 4 + [f"sentence number {i} of a longer and padded batch of reviews" for i in range(12)]
    enc = dict(minilm.tokenizer(texts, padding=True, return_tensors="pt"))
    ref, got = runtime.all_exit_logits(enc), quantized.all_exit_logits(enc)
    # random exit heads on real encoder weights: the INT8 logits stay close and mostly give the same class
    assert float((got - ref).abs().max()) < 0.25 * float(ref.abs().max())
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8
    assert (quantized.full(enc).argmax(-1) == ref[-1].argmax(-1)).float().mean() >= 0.8
