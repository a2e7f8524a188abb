"""Contract of the one early-exit loop: for every exit policy and every runner, ``engine.run``
takes exactly the exits the simulator (``simulate_exits``) takes over that runner's own logits, at
batch 1 and batched, and answers with the logits of the exit taken.

INT8 runners quantize activations dynamically, with one scale per tensor over the whole batch: a
row's logits move (by up to 0.4% here) when its batch mates leave. So batched, their answers are
checked to 2% of the logits' scale, with thresholds kept off every row's statistic (``with_margin``);
at batch 1, where nothing else shares the tensor, exactly."""

import dataclasses

import pytest
import numpy as np
import torch

from conftest import diversify, make_tiny
from metabert.engine import loop as engine
from metabert.engine.loop import every_exit
from metabert.data.batching import pad_all, tokenize
from metabert.eval.evaluate import candidate_policies
from metabert.engine.policies import POLICIES, ThresholdPolicy, simulate_exits
from metabert.model.multi_exit import EagerRunner
from metabert.deploy.runners import RUNNERS as REGISTERED, EagerInt8Runner

TEXTS = ["good", "bad film", "a long and winding review of a film that was neither good nor bad",
         "truly awful", "wonderful", "meh , it was fine i guess", "the best", "not the best"] * 2
RUNNERS = ["eager", "eager-int8", "ort", "ort-int8"]  # metabert.deploy.runners.RUNNERS, each checked here
# the single ONNX file's runners answer a whole early exit per call (no layer steps to compare with the
# simulator): tests/test_single_file.py checks they take their folder's runner's exits
SINGLE_FILE_RUNNERS = ["ort-single", "ort-int8-single"]
# How far a row's logits in a batch may be from the same row's in the full pass: x the largest |logit|
# for INT8, absolute for fp32. Dynamic INT8 quantizes activations over the rows still running, so a
# row's logits move as others leave; eager-int8's exit heads too (their dense layers are INT8), which
# on these saturated random heads moves a row by up to 3%. A row put in another's place moves by ~100%.
BATCHED_TOL = {"eager": 1e-4, "ort": 1e-4, "eager-int8": 5e-2, "ort-int8": 2e-2}


@pytest.fixture(scope="module")
def model():
    return diversify(make_tiny(("neg", "pos", "mixed"), seed=5), seed=0).eval()


@pytest.fixture(scope="module")
def runners(model, tmp_path_factory):
    out = {"eager": EagerRunner(model), "eager-int8": EagerInt8Runner(model)}
    try:
        from metabert.deploy.onnx_export import export
        from metabert.deploy.ort_runner import OrtMultiExit
        from metabert.deploy.quantize import quantize_export
    except ImportError:  # pragma: no cover - the onnx extra is installed by make test
        return out
    fp32 = export(model, None, tmp_path_factory.mktemp("onnx"))
    out["ort"] = OrtMultiExit(fp32)
    out["ort-int8"] = OrtMultiExit(quantize_export(fp32, tmp_path_factory.mktemp("onnx-int8")))
    return out


def test_every_registered_runner_is_checked(runners):
    assert sorted(RUNNERS + SINGLE_FILE_RUNNERS) == sorted(REGISTERED)
    for name, runner in runners.items():
        assert runner.name == name


STATISTICS = {name: policy.statistic for name, policy in POLICIES.items() if issubclass(policy, ThresholdPolicy)}


def with_margin(logits: torch.Tensor, policy):
    """``policy`` with its threshold moved to the middle of the gap between the statistics of
    ``logits`` (L, B, C) on either side of it. INT8 runners quantize activations with one range per
    batch, so a row's logits move a little as the batch shrinks to the rows still running; a
    threshold that happens to sit on a row's statistic would flip that row by chance, not by a bug."""
    if policy.name not in STATISTICS:
        return policy
    values = STATISTICS[policy.name](logits).flatten()
    below, above = values[values < policy.threshold], values[values >= policy.threshold]
    if not len(below) or not len(above):
        return policy
    return dataclasses.replace(policy, threshold=float(below.max() + above.min()) / 2)


@pytest.mark.parametrize("runner_name", RUNNERS)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_run_takes_the_simulated_exits(model, runners, runner_name, name):
    if runner_name not in runners:
        pytest.skip("onnxruntime is not installed")
    runner = runners[runner_name]
    encoded = tokenize(model.tokenizer, TEXTS, None, 64).encoded
    inputs = pad_all(encoded, model.tokenizer.pad_token_id)
    logits = every_exit(runner, inputs)
    policies = [with_margin(logits, p) if "int8" in runner_name else p for p in candidate_policies(logits, name)]
    policies = [p for p in policies if len(set(simulate_exits(logits, p).tolist())) > 1]
    assert policies, f"no {name} setting gives a mix of exit layers: the test would prove nothing"
    for policy in policies[:3]:
        expected = simulate_exits(logits, policy)
        got = engine.run(runner, inputs, policy)
        assert torch.equal(got.exit_layer, expected)
        taken = logits[expected - 1, torch.arange(len(TEXTS))]
        scale = 1.0 if runner_name in ("eager", "ort") else float(taken.abs().max())
        assert float((got.logits - taken).abs().max()) <= BATCHED_TOL[runner_name] * scale
        for i in range(len(TEXTS)):  # batch 1 takes the loop's no-bookkeeping path
            alone = pad_all(tokenize(model.tokenizer, [TEXTS[i]], None, 64).encoded, model.tokenizer.pad_token_id)
            own = every_exit(runner, alone)  # (L, 1, C): this sample's batch-1 logits
            one = engine.run(runner, alone, policy)
            assert torch.equal(one.exit_layer, simulate_exits(own, policy))
            assert torch.allclose(one.logits, own[one.exit_layer - 1, 0], atol=1e-5)
            if runner_name in ("eager", "ort"):  # fp32: independent of the batch
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
    assert torch.allclose(full.logits, every_exit(runner, inputs)[-1], atol=1e-4)


@pytest.mark.parametrize("runner_name", ["ort", "ort-int8"])
def test_ort_batch1_threshold_policies_run_in_one_graph(model, runners, runner_name):
    """ONNX Runtime's batch-1 path for the threshold policies is the fused graph (checked above
    against the simulator like every path); patience policies and batches step layer by layer."""
    if runner_name not in runners:
        pytest.skip("onnxruntime is not installed")
    runner = runners[runner_name]
    one = pad_all(tokenize(model.tokenizer, [TEXTS[2]], None, 64).encoded, model.tokenizer.pad_token_id)
    two = pad_all(tokenize(model.tokenizer, TEXTS[:2], None, 64).encoded, model.tokenizer.pad_token_id)
    for name in ("entropy", "norm-entropy", "max-prob"):
        assert runner.early_exit_one(one, POLICIES[name](0.5)) is not None
        assert runner.early_exit_one(two, POLICIES[name](0.5)) is None
    assert runner.early_exit_one(one, POLICIES["patience"](patience=2)) is None


@pytest.mark.parametrize("runner_name", ["ort", "ort-int8"])
def test_unrolled_graph_is_the_fused_graphs_work_without_its_ifs(model, runners, runner_name):
    """The graph the profile times to split an exit's cost (``onnx_fused.unrolled``) computes what
    the fused graph does when no sample leaves: every exit's logits as the runner's steps give them,
    and each exit's rule as the policy decides it on them; without tests, the logits only."""
    from metabert.deploy.onnx_fused import unrolled

    if runner_name not in runners:
        pytest.skip("onnxruntime is not installed")
    runner = runners[runner_name]
    one = pad_all(tokenize(model.tokenizer, [TEXTS[1]], None, 64).encoded, model.tokenizer.pad_token_id)
    own = every_exit(runner, one)  # (L, 1, C)
    feeds = {**runner.feeds(one), "threshold": np.array(0.5, dtype=np.float32)}
    for name in ("entropy", "norm-entropy", "max-prob"):
        policy = POLICIES[name](0.5)
        outs = runner.fused_session(name, unrolled).run(None, feeds)
        logits, leaves = outs[0::2], outs[1::2]  # logits_1, leave_1, ..., logits_L
        assert len(logits) == runner.num_layers and len(leaves) == runner.num_layers - 1
        for i, got in enumerate(logits):
            assert np.allclose(got, own[i].numpy(), atol=1e-5)
        for i, leave in enumerate(leaves):
            assert bool(leave) == bool(policy.step(own[i], policy.init_state(1))[0][0])
        bare = runner.fused_session(name, lambda *a: unrolled(*a, tests=False)).run(None, feeds)
        assert len(bare) == runner.num_layers and np.allclose(bare[-1], own[-1].numpy(), atol=1e-5)


@pytest.mark.parametrize("runner_name", RUNNERS)
def test_engine_work_runs_at_the_runners_host_threads(model, runners, runner_name):
    """ONNX Runtime runners ask for 1 torch thread around the engine's exit tests (torch's spinning
    OpenMP workers slowed ORT's batch-32 early exit by 1.75x); the caller's setting comes back after."""
    if runner_name not in runners:
        pytest.skip("onnxruntime is not installed")
    runner = runners[runner_name]
    inputs = pad_all(tokenize(model.tokenizer, TEXTS[:4], None, 64).encoded, model.tokenizer.pad_token_id)
    seen = []

    class Watching:  # the exit test records the threads it ran at
        name = "entropy"

        def __init__(self):
            self.inner = POLICIES["entropy"](0.3)

        def init_state(self, batch):
            return self.inner.init_state(batch)

        def decide_one(self, values):  # no Python-float shortcut: every test runs through step
            return None

        def step(self, logits, state):
            seen.append(torch.get_num_threads())
            return self.inner.step(logits, state)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    one_call = getattr(runner, "fused", None)
    if one_call is not None:  # the layer-by-layer loop, whose exit tests run in torch (not one graph call)
        runner.fused = False
    try:
        engine.run(runner, inputs, Watching())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        if one_call is not None:
            runner.fused = one_call
    assert seen and set(seen) == {1 if runner_name.startswith("ort") else 2}


@pytest.mark.parametrize("runner_name", RUNNERS)
def test_select_drops_the_padding_only_the_rows_that_left_needed(model, runners, runner_name):
    """When the longest row leaves, the others go on without its padding, and the next layer's
    exit logits are those of the untrimmed rows."""
    if runner_name not in runners:
        pytest.skip("onnxruntime is not installed")
    runner = runners[runner_name]
    texts = [TEXTS[2], TEXTS[0], TEXTS[5]]  # the long review first
    encoded = tokenize(model.tokenizer, texts, None, 64).encoded
    inputs = pad_all(encoded, model.tokenizer.pad_token_id)
    state, _ = runner.step(0, runner.start(inputs))
    keep = torch.tensor([False, True, True])
    trimmed = runner.select(state, keep)
    hidden = trimmed[0]
    assert hidden.shape[1] == max(len(encoded.input_ids[i]) for i in (1, 2)) < inputs["input_ids"].shape[1]
    _, logits = runner.step(1, trimmed)
    _, untrimmed = runner.step(1, state)
    tol = BATCHED_TOL[runner_name] * (untrimmed.abs().max().item() if "int8" in runner_name else 1)
    assert torch.allclose(logits, untrimmed[keep], atol=tol)
