"""Contract tests over every registered exit policy."""

import pytest
import torch

from conftest import diversify, make_tiny
from metabert.data.batching import collate, encode, model_inputs
from metabert.data.tasks import Dataset, Example
from metabert.eval.evaluate import all_exit_logits, candidate_policies, run_early_exit
from metabert.engine.policies import POLICIES, get_policy, policy_from_dict, policy_to_dict, simulate_exits

TEXTS = ["good", "bad film", "a long and winding review of a film that was neither good nor bad",
         "truly awful", "wonderful", "meh , it was fine i guess", "the best", "not the best"] * 3


@pytest.fixture(scope="module")
def model():
    m = make_tiny(("neg", "pos", "mixed"), seed=5)
    return diversify(m, seed=0).eval()


@pytest.fixture(scope="module")
def data(model):
    return encode(Dataset([Example(t, None, i % 3) for i, t in enumerate(TEXTS)], ("neg", "pos", "mixed"), "mem"),
                  model.tokenizer, 64)


@pytest.fixture(scope="module")
def logits(model, data):
    return all_exit_logits(model, data)


def mid_policy(name, logits):
    """A candidate that sends samples to more than one exit layer."""
    for policy in candidate_policies(logits, name):
        if len(set(simulate_exits(logits, policy).tolist())) > 1:
            return policy
    pytest.fail(f"no {name} candidate mixes exit layers")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_batched_equals_one_by_one(name, model, data, logits):
    policy = mid_policy(name, logits)
    pad = model.tokenizer.pad_token_id
    batched = model.early_exit(**model_inputs(collate(data, list(range(len(data))), pad)), policy=policy)
    for i in range(len(data)):
        alone = model.early_exit(**model_inputs(collate(data, [i], pad)), policy=policy)
        assert alone.exit_layer.item() == batched.exit_layer[i].item(), (name, i)
        assert alone.predictions.item() == batched.predictions[i].item()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_real_loop_equals_simulation(name, model, data, logits):
    policy = mid_policy(name, logits)
    output, _ = run_early_exit(model, data, policy, batch_size=7)
    assert torch.equal(output.exit_layer, simulate_exits(logits, policy))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_candidates_span_no_exit_to_all_at_layer_one(name, logits):
    layers = [simulate_exits(logits, p).float().mean().item() for p in candidate_policies(logits, name)]
    assert max(layers) == 3.0  # one candidate never exits early
    if name in ("entropy", "norm-entropy", "max-prob"):
        assert min(layers) == 1.0  # and one sends everything out at layer 1
    else:
        assert min(layers) < 3.0


def test_policy_rules_on_hand_made_logits():
    sure, unsure = [8.0, 0.0], [0.1, 0.0]
    other = [0.0, 8.0]
    # three exits; sample 0 sure from the start, sample 1 unsure then sure, sample 2 flips its answer
    logits = torch.tensor([[sure, unsure, sure], [sure, sure, other], [sure, sure, sure]])
    assert simulate_exits(logits, get_policy("entropy", 0.1)).tolist() == [1, 2, 1]
    assert simulate_exits(logits, get_policy("max-prob", 0.99)).tolist() == [1, 2, 1]
    assert simulate_exits(logits, get_policy("norm-entropy", 0.1)).tolist() == [1, 2, 1]
    # patience t=1: leave once an argmax repeats; sample 2 flips (0 -> 1) so it must wait
    assert simulate_exits(logits, get_policy("patience", patience=1)).tolist() == [2, 2, 3]
    # patience-entropy t=2: two confident agreeing exits in a row
    assert simulate_exits(logits, get_policy("patience-entropy", 0.1, patience=2)).tolist() == [2, 3, 3]
    # t=1 is plain entropy exit
    assert simulate_exits(logits, get_policy("patience-entropy", 0.1, patience=1)).tolist() == [1, 2, 1]


def test_registry_errors_and_round_trip():
    with pytest.raises(ValueError, match="unknown exit policy 'magic'.*entropy"):
        get_policy("magic")
    with pytest.raises(ValueError, match="patience must be >= 1"):
        get_policy("patience", patience=0)
    policy = get_policy("patience-entropy", 0.2, 3)
    assert policy_from_dict(policy_to_dict(policy)) == policy


def test_decide_one_answers_as_step_does_or_not_at_all():
    """The engine's batch-1 test in Python floats (``decide_one``) never contradicts ``step``, the
    float32 rule the simulator uses: on logits of every size and class count, with thresholds drawn
    at and around each sample's own statistic, where the two are closest to disagreeing."""
    from hypothesis import given, settings, strategies as st

    from metabert.engine.policies import ThresholdPolicy

    logit = st.floats(-60, 60, allow_nan=False, width=32)

    rules = sorted(n for n, p in POLICIES.items() if issubclass(p, ThresholdPolicy))

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(rules), st.lists(logit, min_size=2, max_size=6),
           st.floats(-1e-3, 1e-3), st.sampled_from([0.0, 1e-7, 1e-5, 1e-4, 3e-4, 1e-2]))
    def check(name, values, shift, exact):
        row = torch.tensor([values], dtype=torch.float32)
        own = float(POLICIES[name].statistic(row)[0])
        for threshold in (own, own + shift, own * (1 + exact), own - exact, 0.3, 0.69, 0.9):
            policy = get_policy(name, threshold)
            quick = policy.decide_one(row[0].tolist())
            if quick is not None:
                assert quick == bool(policy.step(row, policy.init_state(1))[0][0]), (name, values, threshold)

    check()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_decide_one_leaves_stateful_rules_and_bad_logits_to_step(name):
    policy = get_policy(name, 0.3, 2)
    stateful = policy.state_size > 0
    assert (policy.decide_one([5.0, 0.0]) is None) == stateful
    assert policy.decide_one([float("nan"), 0.0]) is None
    assert policy.decide_one([float("inf"), 0.0]) is None
