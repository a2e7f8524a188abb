"""Contract tests over every registered training method, and each method's own rule."""

import pytest
import torch

from conftest import make_tiny
from metabert.training.methods import METHODS, entry, get_method, is_static_method
from metabert.model.multi_exit import exit_losses

EPOCHS = 4


def make_batch(model):
    enc = model.tokenizer(["one text", "another longer text here", "third"], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"], "labels": torch.tensor([0, 1, 1])}


def grads_for(method, model, batch, epoch, step=0):
    for name, p in model.named_parameters():
        p.requires_grad_(method.trainable(name, epoch, model.num_layers))
        p.grad = None
    loss = method.loss(model, batch, epoch, step)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_only_what_it_declares_and_every_exit_it_should(name):
    torch.manual_seed(0)  # the random draws of layerdrop and theseus
    model = make_tiny(("a", "b"), seed=0, train=True)
    batch = make_batch(model)
    teacher = make_tiny(("a", "b"), seed=5) if entry(name).needs_teacher else None
    method = get_method(name, EPOCHS, teacher=teacher, total_steps=EPOCHS)  # theseus: replacing, then alone
    if hasattr(method, "build"):  # a student made from the teacher
        model = method.build(model)
    reached = set()
    for epoch in range(EPOCHS):
        got = grads_for(method, model, batch, epoch, step=epoch)
        # theseus in its replacing phase: a step that drew no successor module has no gradient (as in Xu et al.)
        replacing = name == "theseus" and method.rate(epoch) < 1
        assert got or replacing, f"{name} trains nothing in epoch {epoch}"
        assert all(method.trainable(n, epoch, model.num_layers) for n in got)
        reached |= got
    heads = {i for i in range(model.num_layers) if any(n.startswith(f"exits.{i}.") for n in reached)}
    static = is_static_method(name)  # one depth: only the last exit trains
    assert heads == ({model.num_layers - 1} if static else set(range(model.num_layers)))
    assert any(n.startswith("encoder.") for n in reached)


def test_weighted_is_depth_weighted_mean():
    model = make_tiny(("a", "b"), seed=0)
    batch = make_batch(model)
    with torch.no_grad():
        losses = exit_losses(model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"])
        got = get_method("weighted").loss(model, batch, 0)
    assert got.item() == pytest.approx(((losses * torch.tensor([1.0, 2.0, 3.0])).sum() / 6).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["two-stage", "distill"])
def test_staged_methods_freeze_backbone_in_stage_two(name):
    method = get_method(name, 4)
    assert method.stage1 == 2
    assert method.trainable("encoder.encoder.layer.0.output.dense.weight", 0, 3)
    assert method.trainable("exits.2.classifier.weight", 0, 3)
    assert not method.trainable("exits.0.classifier.weight", 0, 3)
    assert not method.trainable("encoder.embeddings.word_embeddings.weight", 2, 3)
    assert not method.trainable("exits.2.classifier.weight", 2, 3)
    assert method.trainable("exits.1.dense.weight", 3, 3)
    with pytest.raises(ValueError, match="at least 2 epochs"):
        get_method(name, 1)


def test_alternating_by_epoch_and_by_step():
    model = make_tiny(("a", "b"), seed=0)
    batch = make_batch(model)
    joint, last = get_method("joint"), get_method("last")
    by_epoch, by_step = get_method("alternating", 4), get_method("alternating-step", 4)
    with torch.no_grad():
        assert by_epoch.loss(model, batch, 0, 7) == joint.loss(model, batch, 0)
        assert by_epoch.loss(model, batch, 1, 8) == last.loss(model, batch, 0)
        assert by_step.loss(model, batch, 1, 8) == joint.loss(model, batch, 0)
        assert by_step.loss(model, batch, 0, 7) == last.loss(model, batch, 0)


def test_distill_stage_two_is_kl_to_the_last_exit():
    model = make_tiny(("a", "b"), seed=0)
    batch = make_batch(model)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"})
        teacher = logits[-1].softmax(-1)
        expected = sum((teacher * (teacher.log() - s.log_softmax(-1))).sum(-1).mean() for s in logits[:-1])
        got = get_method("distill", 2).loss(model, batch, 1)
        first_stage = get_method("distill", 2).loss(model, batch, 0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-3, abs=1e-7)
    assert first_stage.item() == pytest.approx(exit_losses(logits[-1:], batch["labels"]).item(), rel=1e-5)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown training method 'magic'.*joint"):
        get_method("magic")


def test_joint_matched_takes_the_updates_and_rows_of_meta():
    from metabert.training.methods.meta import split_tasks
    from metabert.training.methods.options import MetaConfig

    model = make_tiny(("a", "b"), seed=0)
    enc = model.tokenizer([f"text number {i}" for i in range(10)], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.arange(10) % 2}
    config = MetaConfig(support_size=2, meta_batch=2)
    matched, meta = get_method("joint-matched", 3, config), get_method("meta", 3, config)
    assert [matched.updates_per_batch(e) for e in range(3)] == [2, 2, 2]
    assert [meta.updates_per_batch(e) for e in range(3)] == [1, 1, 1]
    first, second = matched.update_batches(batch, 0)
    assert second is batch
    rows = torch.cat([part["labels"] for task in split_tasks(batch, config) for part in task])
    assert torch.equal(first["input_ids"], batch["input_ids"][:8]) and torch.equal(first["labels"], rows)

    warm = MetaConfig(support_size=2, meta_batch=2, schedule="warmstart", warmstart_epochs=1)
    matched, meta = get_method("joint-matched", 3, warm), get_method("meta", 3, warm)
    assert [matched.updates_per_batch(e) for e in range(3)] == [1, 1, 1]
    assert [meta.updates_per_batch(e) for e in range(3)] == [0, 1, 1]
    assert len(matched.update_batches(batch, 0)[0]["labels"]) == 8
    assert matched.update_batches(batch, 1) == [batch]

    shared = MetaConfig(support_size=2, meta_batch=2, share_gradients=True)
    matched, meta = get_method("joint-matched", 3, shared), get_method("meta", 3, shared)
    first, second = matched.update_batches(batch, 0)  # meta's second pass covers the query rows only
    queries = torch.cat([q["labels"] for _, q in split_tasks(batch, shared)])
    assert torch.equal(first["labels"], queries) and len(queries) == 4 and second is batch
    assert meta.update_batches(batch, 0) == [None]  # its Adam step takes the gradient before_step left
