import json

import pytest
import torch

from conftest import make_tiny
from metabert.model.backbones import load_backbone
from metabert.model.multi_exit import MultiExitBert, MultiExitConfig, exit_losses


def batch_for(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


TEXTS = ["a short one", "a much longer sentence that needs quite a few more tokens than the first", "mid size text"]


@pytest.mark.parametrize("name", ["tiny", "minilm-l6"])
@pytest.mark.parametrize("padded", [False, True])
def test_layer_loop_matches_library(name, padded):
    backbone = load_backbone(name)
    model = MultiExitBert(
        MultiExitConfig(num_labels=2, label_names=("a", "b"), backbone=name,
                        backbone_config=backbone.encoder.config.to_dict()),
        backbone.encoder, backbone.tokenizer,
    ).eval()
    texts = TEXTS if padded else TEXTS[:1]
    inputs = batch_for(backbone.tokenizer, texts)
    if padded:
        assert (inputs["attention_mask"] == 0).any()
    with torch.no_grad():
        ours = model.hidden_states(**inputs)
        theirs = backbone.encoder(**inputs, output_hidden_states=True).hidden_states[1:]
    assert len(ours) == len(theirs) == model.num_layers
    real = inputs["attention_mask"].bool()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a[real], b[real], atol=1e-5), (a[real] - b[real]).abs().max()


def test_forward_shapes_and_losses(tiny_model):
    inputs = batch_for(tiny_model.tokenizer, TEXTS)
    logits = tiny_model(**inputs)
    assert logits.shape == (3, 3, 2)
    assert tiny_model(**inputs, num_layers=2).shape == (2, 3, 2)
    losses = exit_losses(logits, torch.tensor([0, 1, 0]))
    assert losses.shape == (3,) and torch.isfinite(losses).all()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_ignores_padding(pooling):
    model = make_tiny(("a", "b"), pooling=pooling)
    one = batch_for(model.tokenizer, TEXTS[:1])
    padded = batch_for(model.tokenizer, TEXTS[:2])
    with torch.no_grad():
        alone = model(**one)[:, 0]
        together = model(**padded)[:, 0]
    assert torch.allclose(alone, together, atol=1e-5)


def test_save_and_load_round_trip(tmp_path, fresh_tiny):
    fresh_tiny.eval()
    target = tmp_path / "ckpt"
    fresh_tiny.save_pretrained(target)
    fresh_tiny.save_pretrained(target)  # overwriting an existing checkpoint works
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
    assert leftovers == []
    loaded = MultiExitBert.from_pretrained(target)
    assert loaded.config == fresh_tiny.config
    inputs = batch_for(fresh_tiny.tokenizer, TEXTS)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), fresh_tiny(**inputs))
    stored = json.loads((target / "metabert_config.json").read_text())
    assert stored["label_names"] == ["a", "b", "c"]


def test_killed_save_leaves_previous_checkpoint(tmp_path, fresh_tiny, monkeypatch):
    target = tmp_path / "ckpt"
    fresh_tiny.save_pretrained(target)
    before = (target / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("metabert.model.multi_exit.save_model", boom)
    with pytest.raises(KeyboardInterrupt):
        fresh_tiny.save_pretrained(target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a metabert checkpoint"):
        MultiExitBert.from_pretrained(tmp_path)


@pytest.mark.parametrize("fields, message", [
    ({"num_labels": 1, "label_names": ("a",)}, "num_labels"),
    ({"num_labels": 2, "label_names": ("a",)}, "label_names"),
    ({"num_labels": 2, "label_names": ("a", "b"), "pooling": "max"}, "pooling"),
    ({"num_labels": 2, "label_names": ("a", "b"), "dropout": 1.5}, "dropout"),
])
def test_config_validation_names_field(fields, message):
    with pytest.raises(ValueError, match=message):
        MultiExitConfig(**fields)


def test_unknown_model_folder():
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_backbone("./does/not/exist")


def test_local_backbone_folder(tmp_path):
    tiny = load_backbone("tiny", seed=7)
    tiny.encoder.save_pretrained(tmp_path / "bb")
    tiny.tokenizer.save_pretrained(tmp_path / "bb")
    model = MultiExitBert.from_backbone(str(tmp_path / "bb"), ["x", "y"])
    assert model.num_layers == 3 and model.config.backbone == str(tmp_path / "bb")
    for a, b in zip(model.encoder.parameters(), tiny.encoder.parameters()):
        assert torch.equal(a, b)


def test_linear_heads_round_trip(tmp_path):
    model = make_tiny(("a", "b"), head="linear")
    assert model.exits[0].dense is None
    model.save_pretrained(tmp_path / "c")
    loaded = MultiExitBert.from_pretrained(tmp_path / "c")
    inputs = batch_for(model.tokenizer, TEXTS)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), model(**inputs))
        assert torch.allclose(model.exits[1].infer(torch.ones(1, 32)), model.exits[1](torch.ones(1, 32)))


def test_exit_heads_can_start_from_the_pretrained_pooler():
    backbone = load_backbone("tiny", seed=0)
    assert backbone.pooler is not None and backbone.encoder.pooler is None
    model = MultiExitBert.from_backbone(backbone, ["a", "b"], head_init="pooler")
    for head in model.exits:
        assert torch.equal(head.dense.weight, backbone.pooler.weight)
        assert torch.equal(head.dense.bias, backbone.pooler.bias)
    random_heads = make_tiny(("a", "b"))
    assert not torch.equal(random_heads.exits[0].dense.weight, backbone.pooler.weight)
    with pytest.raises(ValueError, match="needs --head pooler"):
        make_tiny(("a", "b"), head="linear", head_init="pooler")
