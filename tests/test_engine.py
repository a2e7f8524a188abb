"""Contract of the one early-exit loop: for every exit policy and every runner, ``engine.run``
takes exactly the exits the simulator (``simulate_exits``) takes over that runner's own logits, at
batch 1 and batched, and answers with the logits of the exit taken."""

import pytest
import torch

from conftest import diversify, make_tiny
from metabert import engine
from metabert.batching import pad_all, tokenize
from metabert.evaluation import candidate_policies
from metabert.exits import POLICIES, simulate_exits
from metabert.modeling import EagerRunner

TEXTS = ["good", "bad film", "a long and winding review of a film that was neither good nor bad",
         "truly awful", "wonderful", "meh , it was fine i guess", "the best", "not the best"] * 2
RUNNERS = ["eager", "ort"]


@pytest.fixture(scope="module")
def model():
    return diversify(make_tiny(("neg", "pos", "mixed"), seed=5), seed=0).eval()


@pytest.fixture(scope="module")
def runners(model, tmp_path_factory):
    out = {"eager": EagerRunner(model)}
    try:
        from metabert.onnx_runtime import OrtMultiExit, export
    except ImportError:  # pragma: no cover - the onnx extra is installed by make test
        return out
    out["ort"] = OrtMultiExit(export(model, None, tmp_path_factory.mktemp("onnx")))
    return out


def all_exits(runner, inputs) -> torch.Tensor:
    """(L, B, C) every exit's logits through the runner's own layer steps."""
    state, out = runner.start(inputs), []
    for i in range(runner.num_layers):
        state, logits = runner.step(i, state)
        out.append(logits.clone())
    return torch.stack(out)


@pytest.mark.parametrize("runner_name", RUNNERS)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_run_takes_the_simulated_exits(model, runners, runner_name, name):
    if runner_name not in runners:
        pytest.skip("onnxruntime is not installed")
    runner = runners[runner_name]
    encoded = tokenize(model.tokenizer, TEXTS, None, 64).encoded
    inputs = pad_all(encoded, model.tokenizer.pad_token_id)
    logits = all_exits(runner, inputs)
    policies = [p for p in candidate_policies(logits, name) if len(set(simulate_exits(logits, p).tolist())) > 1]
    assert policies, f"no {name} setting gives a mix of exit layers: the test would prove nothing"
    for policy in policies[:3]:
        expected = simulate_exits(logits, policy)
        got = engine.run(runner, inputs, policy)
        assert torch.equal(got.exit_layer, expected)
        taken = logits[expected - 1, torch.arange(len(TEXTS))]
        assert torch.allclose(got.logits, taken, atol=1e-4)
        for i in range(len(TEXTS)):  # batch 1 takes the loop's no-bookkeeping path
            alone = tokenize(model.tokenizer, [TEXTS[i]], None, 64).encoded
            one = engine.run(runner, pad_all(alone, model.tokenizer.pad_token_id), policy)
            assert int(one.exit_layer[0]) == int(expected[i])


@pytest.mark.parametrize("runner_name", RUNNERS)
def test_run_full_is_the_last_exit(model, runners, runner_name):
    if runner_name not in runners:
        pytest.skip("onnxruntime is not installed")
    runner = runners[runner_name]
    encoded = tokenize(model.tokenizer, TEXTS, None, 64).encoded
    inputs = pad_all(encoded, model.tokenizer.pad_token_id)
    full = engine.run_full(runner, inputs)
    assert (full.exit_layer == runner.num_layers).all()
    assert torch.allclose(full.logits, all_exits(runner, inputs)[-1], atol=1e-4)
