"""Layer graphs written with ONNX Runtime's fused kernels (``metabert.deploy.fused_layers``): every
layer graph and the full graph carry fused attention, fp32 logits match PyTorch with padding for
every BERT-layout family, pooling and head, and the INT8 graphs run quantized fused attention."""

import collections
import json

import numpy as np
import pytest
import torch
from conftest import make_tiny

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from metabert.backbones import load_backbone
from metabert.deploy import fused_layers
from metabert.modeling import MultiExitBert
from metabert.onnx_runtime import META_NAME, OrtMultiExit, check_export, export
from metabert.quantize import quantize_export

SENTENCES = ["a delightful , moving film that is great fun from start to finish", "dull", "a mess , but fun",
             "wonderful acting and a story that never lets go of you , even when it stumbles", "not bad at all"]


def ops(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def assert_fused(folder, num_layers: int, attention: str = "Attention"):
    """Each layer graph holds one fused attention, no unfused softmax and its two layer norms; the
    full graph one attention per layer."""
    for i in range(num_layers):
        counts = ops(folder / f"layer_{i + 1}.onnx")
        assert counts[attention] == 1 and counts["Softmax"] == 0, counts
        assert counts["LayerNormalization"] == 2, counts
    full = ops(folder / "full.onnx")
    assert full[attention] == num_layers and full["Softmax"] == 0, full


def ort_ops(folder, name, **runner) -> collections.Counter:
    """The op types of graph ``name`` as the runner's ONNX Runtime session runs it (after its graph
    optimisations)."""
    runtime = OrtMultiExit(folder, **runner)
    target = folder.parent / f"{folder.name}-{name}.optimized.onnx"
    runtime._session(name, runtime._make_options(optimized_path=str(target)))
    return ops(target)


@pytest.mark.parametrize("pooling,head", [("mean", "pooler"), ("mean", "linear"), ("cls", "pooler"), ("cls", "linear")])
def test_fused_layers_match_pytorch_for_each_pooling_and_head(tmp_path, pooling, head):
    model = make_tiny(pooling=pooling, head=head)
    folder = export(model, None, tmp_path)
    assert json.loads((folder / META_NAME).read_text())["layers"] == "fused"
    assert_fused(folder, model.num_layers)
    runtime = OrtMultiExit(folder)
    assert ("pool" in runtime._layer_inputs[0]) == (pooling == "mean")
    assert check_export(model, runtime) < 1e-4  # every exit and the full graph, on a padded batch


def test_full_graph_and_every_exit_match_pytorch_padded_and_alone(tiny_model, tmp_path):
    runtime = OrtMultiExit(export(tiny_model, None, tmp_path))
    enc = dict(tiny_model.tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    assert not enc["attention_mask"].all()
    with torch.inference_mode():
        ref = tiny_model.full_logits(**enc)
        every = tiny_model(**enc)
    torch.testing.assert_close(runtime.full(enc), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(runtime.all_exit_logits(enc), every, atol=1e-5, rtol=0)
    # a padded row gives the logits it gives alone
    length = int(enc["attention_mask"][1].sum())
    alone = {k: v[1:2, :length] for k, v in enc.items()}
    torch.testing.assert_close(runtime.full(alone)[0], ref[1], atol=1e-5, rtol=0)


def family_models(tmp_path_factory):
    from test_backbones import tiny_configs
    from transformers import AutoModel

    tokenizer = load_backbone("tiny").tokenizer
    out = {}
    for family, config in tiny_configs(tokenizer).items():
        if family not in fused_layers.BERT_LAYOUT:
            continue
        folder = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[family] = folder
    return out


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return family_models(tmp_path_factory)


@pytest.mark.parametrize("family", fused_layers.BERT_LAYOUT)
def test_every_bert_layout_family_exports_fused_and_matches(families, family, tmp_path):
    model = MultiExitBert.from_backbone(str(families[family]), ["neg", "pos"], seed=1).eval()
    assert fused_layers.unsupported(model) is None
    folder = export(model, None, tmp_path)
    assert_fused(folder, model.num_layers)
    assert check_export(model, OrtMultiExit(folder)) < 1e-4


@pytest.mark.parametrize("attention,skip_norms", [("MultiHeadAttention", False), ("lean", False), ("Attention", True)])
def test_other_kernels_match_pytorch(tiny_model, tmp_path, attention, skip_norms):
    """The alternatives the benchmark measures (benchmarks/fused_attention.py) compute the same logits."""
    folder = export(tiny_model, None, tmp_path, attention=attention, skip_norms=skip_norms)
    counts = ops(folder / "layer_2.onnx")
    assert counts["SkipLayerNormalization"] == (2 if skip_norms else 0), counts
    assert counts["Softmax"] == (1 if attention == "lean" else 0), counts
    assert check_export(tiny_model, OrtMultiExit(folder)) < 1e-4


def test_runner_keeps_onnx_runtime_from_fusing_the_layer_norms(tiny_model, tmp_path):
    """ONNX Runtime would fuse Add + LayerNormalization into its SkipLayerNormalization kernel and
    Add + Gelu into BiasGelu, both slower on CPU (``onnx_runtime.SLOW_FUSIONS``): the runner's
    sessions leave them apart, for our graphs and for the torch-exported ones."""
    fused = export(tiny_model, None, tmp_path / "fused")
    kept = ort_ops(fused, "layer_1.onnx")
    assert kept["LayerNormalization"] == 2 and kept["SkipLayerNormalization"] == 0 and kept["BiasGelu"] == 0, kept
    assert ort_ops(fused, "layer_1.onnx", disabled_fusions=())["SkipLayerNormalization"] == 2
    plain = export(tiny_model, None, tmp_path / "torch", layers="torch")
    assert ort_ops(plain, "layer_1.onnx")["SkipLayerNormalization"] == 0


@pytest.mark.parametrize("act,kernel", [("gelu_new", "FastGelu"), ("relu", "Relu"), ("silu", "Sigmoid")])
def test_other_activations_are_written_with_their_kernel(act, kernel, tmp_path):
    model = make_tiny()
    model.encoder.config.hidden_act = act
    from transformers.activations import ACT2FN

    for layer in model.encoder.encoder.layer:
        layer.intermediate.intermediate_act_fn = ACT2FN[act]
    folder = export(model, None, tmp_path)
    assert ops(folder / "layer_1.onnx")[kernel] >= 1
    assert check_export(model, OrtMultiExit(folder)) < 1e-4


def test_layers_the_kernels_do_not_cover_are_exported_through_torch(tmp_path):
    model = make_tiny()
    model.encoder.config.hidden_act = "gelu_10"  # clipped GELU: no kernel here
    from transformers.activations import ACT2FN

    for layer in model.encoder.encoder.layer:
        layer.intermediate.intermediate_act_fn = ACT2FN["gelu_10"]
    assert "gelu_10" in fused_layers.unsupported(model)
    folder = export(model, None, tmp_path)
    assert json.loads((folder / META_NAME).read_text())["layers"] == "torch"
    assert ops(folder / "layer_1.onnx")["Attention"] == 0
    assert check_export(model, OrtMultiExit(folder)) < 1e-4


def test_unknown_layers_option_is_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="layers must be one of"):
        export(tiny_model, None, tmp_path, layers="fast")


def test_torch_layers_still_export_as_before(tiny_model, tmp_path):
    folder = export(tiny_model, None, tmp_path, layers="torch")
    assert ops(folder / "layer_1.onnx")["Softmax"] == 1
    assert check_export(tiny_model, OrtMultiExit(folder)) < 1e-4


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
    ref = runtime.all_exit_logits(enc)
    got = quantized.all_exit_logits(enc)
    assert got.shape == ref.shape
    # random exit heads on real encoder weights: the INT8 logits stay close and predict the same class mostly
    assert float((got - ref).abs().max()) < 0.25 * float(ref.abs().max())
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree >= 0.8, agree
    full_agree = (quantized.full(enc).argmax(-1) == ref[-1].argmax(-1)).float().mean()
    assert full_agree >= 0.8, full_agree
    assert np.isfinite(got.numpy()).all()
