"""Contract tests of entropy early exit."""

import math

import pytest
import torch

from conftest import sharpen, make_tiny
from metabert.data.batching import collate, encode, model_inputs
from metabert.data.tasks import Dataset, Example
from metabert.eval.evaluate import all_exit_logits, run_early_exit, simulate
from metabert.engine.policies import entropy

SENTENCES = [
    "it is a charming and often affecting journey",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding",
    "a gorgeous , witty , seductive movie",
    "it 's slow -- very , very slow",
    "bad",
    "the movie is a disaster from start to finish and nobody in it seems to care",
    "good fun",
] * 3


@pytest.fixture(scope="module")
def model():
    return sharpen(make_tiny(("neg", "pos"), seed=3), 40.0).eval()


@pytest.fixture(scope="module")
def data(model):
    ds = Dataset([Example(s, None, i % 2) for i, s in enumerate(SENTENCES)], ("neg", "pos"), "mem")
    return encode(ds, model.tokenizer, 64)


def full_batch(model, data):
    return model_inputs(collate(data, list(range(len(data))), model.tokenizer.pad_token_id))


def test_threshold_zero_never_exits_early(model, data):
    inputs = full_batch(model, data)
    out = model.early_exit(**inputs, threshold=0.0)
    assert (out.exit_layer == model.num_layers).all()
    with torch.no_grad():
        last = model(**inputs)[-1]
    assert torch.equal(out.predictions, last.argmax(-1))
    assert torch.allclose(out.logits, last, atol=1e-5)


def test_huge_threshold_exits_everything_at_layer_one(model, data):
    inputs = full_batch(model, data)
    out = model.early_exit(**inputs, threshold=1e9)
    assert (out.exit_layer == 1).all()
    with torch.no_grad():
        first = model(**inputs)[0]
    assert torch.allclose(out.logits, first, atol=1e-5)


def intermediate_threshold(model, data):
    """A threshold between the exits' entropies, so samples leave at different layers."""
    logits = all_exit_logits(model, data)
    return float(entropy(logits[:-1]).median())


def test_mixed_exits_batched_equals_one_by_one(model, data):
    threshold = intermediate_threshold(model, data)
    batched = model.early_exit(**full_batch(model, data), threshold=threshold)
    assert len(set(batched.exit_layer.tolist())) > 1, "threshold should give a mix of exit layers"
    for i in range(len(data)):
        alone = model.early_exit(**model_inputs(collate(data, [i], model.tokenizer.pad_token_id)), threshold=threshold)
        assert alone.exit_layer.item() == batched.exit_layer[i].item()
        assert alone.predictions.item() == batched.predictions[i].item()
        assert torch.allclose(alone.logits[0], batched.logits[i], atol=1e-4)


def test_early_exit_agrees_with_simulation_from_all_exits(model, data):
    threshold = intermediate_threshold(model, data)
    logits = all_exit_logits(model, data, batch_size=5)
    simulated = simulate(logits, data.labels, "accuracy", threshold)
    output, _ = run_early_exit(model, data, threshold, batch_size=5)
    assert simulated.mean_exit_layer == pytest.approx(output.exit_layer.float().mean().item())
    assert list(simulated.exit_counts) == torch.bincount(output.exit_layer, minlength=4)[1:].tolist()


def test_exit_rule_is_entropy_below_threshold(model, data):
    threshold = intermediate_threshold(model, data)
    logits = all_exit_logits(model, data)
    out, _ = run_early_exit(model, data, threshold)
    ent = entropy(logits)
    for i, layer in enumerate(out.exit_layer.tolist()):
        assert all(ent[j, i] >= threshold for j in range(layer - 1))
        if layer < model.num_layers:
            assert ent[layer - 1, i] < threshold


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_is_stable_for_huge_logits(dtype):
    logits = torch.tensor([[1e4, -1e4], [0.0, 0.0], [-1e4, -1e4], [2.0, 1.0]], dtype=dtype)
    ent = entropy(logits)
    assert torch.isfinite(ent).all()
    assert ent[0].item() == pytest.approx(0.0, abs=1e-6)
    assert ent[1].item() == pytest.approx(math.log(2), rel=1e-5)
    assert ent[2].item() == pytest.approx(math.log(2), rel=1e-5)
    assert 0 < ent[3].item() < math.log(2)
