"""Property tests of the MAML pieces (MetaBERT Algorithm 1) on the tiny model."""

import pytest
import torch

from conftest import make_tiny
from metabert.training.methods import meta as meta
from metabert.training.methods.options import MetaConfig
from metabert.training.methods import get_method


@pytest.fixture
def model():
    torch.manual_seed(0)
    return make_tiny(("a", "b"), seed=0, dropout=0.0, backbone_dropout=0.0, train=True)


def batch(model, n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    words = ["good", "bad", "film", "plot", "dull", "great", "acting", "awful"]
    texts = [" ".join(words[int(i)] for i in torch.randint(0, 8, (5,), generator=gen)) for _ in range(n)]
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"], "labels": torch.randint(0, 2, (n,), generator=gen)}


def test_inner_step_lowers_support_loss_and_leaves_theta_alone(model):
    support = batch(model)
    params = meta.parameters(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    config = MetaConfig(inner_lr=1e-2, inner_steps=2)
    adapted = meta.adapt(model, params, support, config)
    with torch.no_grad():
        assert meta.task_loss(model, adapted, support) < meta.task_loss(model, params, support)
    assert any(not torch.equal(adapted[n], params[n]) for n in params)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # the originals are untouched


def test_adapting_only_exits_keeps_the_backbone(model):
    params = meta.parameters(model)
    adapted = meta.adapt(model, params, batch(model), MetaConfig(inner_lr=1e-2, adapt="exits"))
    assert all(adapted[n] is params[n] for n in params if not n.startswith("exits."))
    assert any(not torch.equal(adapted[n], params[n]) for n in params if n.startswith("exits."))


def test_second_order_differs_from_first_and_reaches_theta(model):
    tasks = [(batch(model, seed=1), batch(model, seed=2))]
    first, _ = meta.meta_gradient(model, tasks, MetaConfig(inner_lr=0.5, order="first"))
    second, _ = meta.meta_gradient(model, tasks, MetaConfig(inner_lr=0.5, order="second"))
    assert all(torch.isfinite(g).all() for g in second.values())
    emb = "encoder.embeddings.word_embeddings.weight"
    assert second[emb].abs().sum() > 0  # the meta-gradient reaches θ at the bottom of the network
    diff = max(float((first[n] - second[n]).abs().max()) for n in first)
    assert diff > 1e-6


def test_first_order_matches_a_hand_computed_reference(model):
    """FOMAML: the meta-gradient is the query gradient at θ' = θ - α ∇L_support(θ), computed here
    with plain autograd on a copy of the model."""
    support, query = batch(model, seed=3), batch(model, seed=4)
    alpha = 0.05
    got, info = meta.meta_gradient(model, [(support, query)], MetaConfig(inner_lr=alpha, order="first"))

    import copy

    ref = copy.deepcopy(model)
    inputs = lambda b: {k: v for k, v in b.items() if k != "labels"}  # noqa: E731
    from metabert.model.multi_exit import exit_losses

    loss = exit_losses(ref(**inputs(support)), support["labels"]).sum()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p.sub_(alpha * g)
    qloss = exit_losses(ref(**inputs(query)), query["labels"]).sum()
    expected = dict(zip([n for n, _ in ref.named_parameters()], torch.autograd.grad(qloss, list(ref.parameters()))))
    for n in got:
        assert torch.allclose(got[n], expected[n], atol=1e-6, rtol=1e-4), n
    assert info["query_loss"] == pytest.approx(qloss.item(), rel=1e-5)
    assert 0 < info["inner_step_relative"] < 1


def test_non_finite_inner_loss_names_step_and_options(model):
    with torch.no_grad():
        model.exits[0].classifier.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"inner step 1; inner_lr=0.001"):
        meta.adapt(model, meta.parameters(model), batch(model), MetaConfig(inner_lr=1e-3), where="at step 7 ")


def test_exit_tasks_adapt_on_one_exit(model):
    config = MetaConfig(inner_lr=1e-2, task="exit", meta_batch=3, support_size=2)
    tasks = meta.split_tasks(batch(model, n=12), config)
    assert len(tasks) == 3 and all(len(s["labels"]) == 2 and len(q["labels"]) == 2 for s, q in tasks)
    grads, _ = meta.meta_gradient(model, tasks, config)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_meta_method_moves_parameters_and_reports(model):
    method = get_method("meta", 2, MetaConfig(meta_lr=1e-2, inner_lr=1e-3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = method.before_step(model, batch(model, n=8), epoch=0, step=0, diagnose=True)
    assert -1 <= info["cosine_to_query_gradient"] <= 1
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="warmstart needs more epochs"):
        get_method("meta", 1, MetaConfig(schedule="warmstart"))
    warm = get_method("meta", 3, MetaConfig(schedule="warmstart", warmstart_epochs=1))
    assert warm.meta_only_epochs == 1 and warm.before_step(model, batch(model), epoch=1, step=5) == {}


def test_cosine_diagnostic_ignores_dropout_and_sees_the_inner_step():
    torch.manual_seed(0)
    noisy = make_tiny(("a", "b"), seed=0, dropout=0.3, backbone_dropout=0.3, train=True)
    tasks = [(batch(noisy, seed=1), batch(noisy, seed=2))]
    tiny_step = meta.cosine_to_query_gradient(noisy, tasks, MetaConfig(inner_lr=1e-7))
    assert tiny_step == pytest.approx(1.0, abs=1e-4)  # α → 0: the meta-gradient is the query gradient
    assert noisy.training  # the model is left in training mode
    assert meta.cosine_to_query_gradient(noisy, tasks, MetaConfig(inner_lr=1.0)) < 0.999


def test_adam_meta_optimiser_takes_adam_steps_and_keeps_grads(model):
    config = MetaConfig(optimizer="adam", meta_lr=1e-3)
    optimizer = meta.make_optimizer(model, config)
    assert meta.make_optimizer(model, MetaConfig()) is None  # plain SGD keeps no state
    name, param = next(iter(model.named_parameters()))
    param.grad = torch.full_like(param, 7.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    meta.apply(model, grads, config.meta_lr, optimizer)
    for n, p in model.named_parameters():  # Adam's first step moves each weight by lr in the gradient's sign
        assert torch.allclose(before[n] - p.detach(), 1e-3 * grads[n].sign(), atol=1e-5), n
    assert torch.equal(param.grad, torch.full_like(param, 7.0))  # the training step's gradient is left as it was
    assert len(optimizer.state) == len(grads)


@pytest.mark.parametrize("schedule", ["interleaved", "warmstart"])
def test_meta_training_end_to_end_logs_diagnostics(tmp_path, schedule):
    import json

    from metabert.cli import main
    from test_resume import write_data

    data = write_data(tmp_path)
    out = tmp_path / "meta"
    assert main(["train", "--task", "custom", "--train-file", str(data), "--dev-file", str(data), "--text-columns",
                 "text", "--label-column", "label", "--model", "tiny", "--method", "meta", "--epochs", "2",
                 "--batch-size", "8", "--meta-support-size", "2", "--meta-schedule", schedule,
                 "--calibration-fraction", "0.05", "--output", str(out), "--no-progress"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "meta" in log[0] and log[0]["meta"]["meta_updates"] == 15
    assert 0 < log[0]["meta"]["inner_step_relative"] < 1
    assert -1 <= log[0]["meta"]["cosine_to_query_gradient"] <= 1
    if schedule == "warmstart":
        assert "meta" not in log[1] and not log[0]["saved"] and log[1]["saved"]
    else:
        assert log[1]["meta"]["meta_updates"] == 15


def test_without_an_inner_step_the_meta_gradient_is_the_plain_query_gradient(model):
    """inner_lr=0 (the ablation row): θ' = θ, so the meta-gradient is ∇θ L_query(θ) itself."""
    support, query = batch(model, seed=5), batch(model, seed=6)
    got, info = meta.meta_gradient(model, [(support, query)], MetaConfig(inner_lr=0.0))
    assert info["inner_step_relative"] == 0.0
    params = meta.parameters(model)
    plain = torch.autograd.grad(meta.task_loss(model, params, query), list(params.values()), allow_unused=True)
    for (n, p), g in zip(params.items(), plain):
        torch.testing.assert_close(got[n], g if g is not None else torch.zeros_like(p), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="inner_lr"):
        MetaConfig(inner_lr=-1e-4)


def test_with_a_zero_meta_rate_meta_updates_are_computed_but_move_nothing(model):
    """meta_lr=0 (the ablation row meta-no-update): the meta-update runs and reports, θ stays put,
    under both meta-optimisers."""
    for optimizer in ("sgd", "adam"):
        config = MetaConfig(meta_lr=0.0, inner_lr=1e-3, optimizer=optimizer)
        method = get_method("meta", 2, config)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        info = method.before_step(model, batch(model, n=8), epoch=0, step=0, diagnose=True,
                                  optimizer=method.make_optimizer(model))
        assert info["inner_step_relative"] > 0
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="meta_lr"):
        MetaConfig(meta_lr=-1e-5)


def test_shared_gradients_give_the_batch_gradient_and_the_same_meta_gradient(model):
    """share_gradients: the parts' gradients at θ add up to the batch's joint gradient (rows no task
    took included), and the meta-gradient equals the one computed without sharing."""
    config = MetaConfig(inner_lr=0.05, support_size=4, meta_batch=1, share_gradients=True)
    full = batch(model, n=11, seed=7)  # one task of 4 + 4 rows, 3 rows left over
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    got, joint, info = meta.shared_step(model, full, config)
    params = meta.parameters(model)
    loss = meta.task_loss(model, params, full)
    for n, g in meta.gradient(loss, params).items():
        torch.testing.assert_close(joint[n], g, rtol=1e-4, atol=1e-6)
    assert info["batch_loss"] == pytest.approx(loss.item(), rel=1e-6)
    tasks = meta.split_tasks(full, config)
    expected, plain_info = meta.meta_gradient(model, tasks, MetaConfig(inner_lr=0.05, support_size=4, meta_batch=1))
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-6)
    assert info["inner_step_relative"] == pytest.approx(plain_info["inner_step_relative"], rel=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # θ untouched


def test_shared_gradients_need_first_order_episodes_and_one_process(model):
    for option, value in [("order", "second"), ("task", "exit"), ("schedule", "warmstart")]:
        with pytest.raises(ValueError, match=f"share_gradients needs {option}="):
            MetaConfig(share_gradients=True, **{option: value})
    from metabert.training.distributed import World

    method = get_method("meta", 2, MetaConfig(share_gradients=True))
    with pytest.raises(ValueError, match="one process only"):
        method.before_step(model, batch(model), epoch=0, step=0, world=World(rank=0, size=2))


def test_shared_gradients_leave_the_adam_gradient_and_move_theta(model):
    config = MetaConfig(inner_lr=1e-2, meta_lr=1e-2, support_size=2, share_gradients=True)
    method = get_method("meta", 2, config)
    full = batch(model, n=8, seed=9)
    params = meta.parameters(model)
    expected = meta.gradient(meta.task_loss(model, params, full), params)  # at θ, before the meta-update
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = method.before_step(model, full, epoch=0, step=0, diagnose=True)
    assert -1 <= info["cosine_to_query_gradient"] <= 1 and info["inner_step_relative"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())  # the meta-update moved θ
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6)


def test_shared_meta_training_with_no_meta_step_is_joint_training(tmp_path):
    """β = 0 and no dropout: every Adam step of meta with shared gradients follows the batch's
    gradient at θ, which is joint training's; the two runs end with the same weights."""
    from safetensors.torch import load_file

    from metabert.cli import main
    from test_resume import write_data

    data = write_data(tmp_path)
    common = ["train", "--task", "custom", "--train-file", str(data), "--dev-file", str(data), "--text-columns",
              "text", "--label-column", "label", "--model", "tiny", "--epochs", "1", "--batch-size", "8",
              "--dropout", "0", "--backbone-dropout", "0", "--learning-rate", "1e-3", "--calibration-fraction", "0.05",
              "--no-progress"]
    assert main([*common, "--method", "joint", "--output", str(tmp_path / "joint")]) == 0
    assert main([*common, "--method", "meta", "--meta-lr", "0", "--meta-support-size", "3", "--meta-share-gradients",
                 "--output", str(tmp_path / "shared")]) == 0
    a = load_file(tmp_path / "joint" / "model.safetensors")
    b = load_file(tmp_path / "shared" / "model.safetensors")
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-5)
    log = (tmp_path / "shared" / "log.jsonl").read_text()
    assert '"meta_updates": 15' in log
    assert '"meta_share_gradients": true' in (tmp_path / "shared" / "train_config.json").read_text()
