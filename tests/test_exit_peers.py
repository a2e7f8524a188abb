"""Shallow-Deep's growing weights and GAML-BERT's mutual distillation and gradient alignment
(metabert.training.methods.exit_peers) on tiny tensors and the tiny model."""

import pytest
import torch

from conftest import make_tiny
from metabert.training.methods import exit_peers as g
from metabert.engine.policies import get_policy, simulate_exits
from metabert.model.multi_exit import exit_losses


def make_batch(model):
    enc = model.tokenizer(["one text", "another longer text here", "third", "a fourth"], padding=True,
                          return_tensors="pt")
    return {**enc, "labels": torch.tensor([0, 1, 1, 0])}


def test_sdn_weights_grow_linearly_to_the_relative_depth():
    epochs = 4
    table = torch.stack([g.sdn_weights(6, e, epochs) for e in range(epochs)])  # (E, L)
    depth = torch.arange(1, 6) / 6  # C_i
    assert torch.allclose(table[:, -1], torch.ones(epochs))  # the last exit always 1
    assert torch.allclose(table[0, :-1], 0.01 + depth / epochs)
    assert torch.allclose(table[-1, :-1], depth)  # capped at C_i, reached at the last epoch
    assert (table[1:, :-1] >= table[:-1, :-1]).all()  # growing
    assert (table[:, :-1] < 1).all() and torch.all(table[:, 1:-1] > table[:, :-2])  # deeper exits weigh more
    with pytest.raises(ValueError):
        g.sdn_weights(6, 4, 4)


def test_sdn_loss_is_the_weighted_sum():
    model = make_tiny()
    batch = make_batch(model)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        expected = (g.sdn_weights(3, 1, 3) * exit_losses(logits, batch["labels"])).sum()
        assert g.sdn_loss(logits, batch["labels"], 1, 3).item() == pytest.approx(expected.item(), rel=1e-6)


def test_shallow_deep_exit_rule_is_max_softmax():
    logits = torch.tensor([[[4.0, 0.0], [0.2, 0.0]], [[0.0, 1.0], [0.0, 3.0]]])  # (L=2, N=2, C)
    layers = simulate_exits(logits, get_policy("max-prob", threshold=0.9))
    assert layers.tolist() == [1, 2]  # p=0.98 leaves at exit 1; p=0.55 goes on


def test_mutual_kd_zero_when_exits_agree_and_symmetric_gradients():
    same = torch.randn(1, 4, 3).repeat(3, 1, 1)
    assert g.mutual_kd_loss(same).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = g.mutual_kd_loss(logits, temperature=2.0)
    assert loss.item() > 0
    loss.backward()
    assert (logits.grad.abs().sum((1, 2)) > 0).all()  # every exit learns, the deepest included
    with pytest.raises(ValueError, match="two exits"):
        g.mutual_kd_loss(logits[:1])


def test_mutual_kd_matches_its_definition():
    logits = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
    p = logits.softmax(-1)
    expected = sum((p[j] * (p[j].log() - p[i].log())).sum(-1).mean() for i in range(3) for j in range(3) if i != j) / 2
    assert g.mutual_kd_loss(logits).item() == pytest.approx(expected.item(), rel=1e-5)


def test_align_projects_out_only_the_conflicting_part():
    ce = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    conflicting = [torch.tensor([-1.0, 1.0]), torch.tensor([2.0])]
    aligned, cosine = g.align(conflicting, ce)
    assert cosine < 0
    assert torch.allclose(aligned[0], torch.tensor([0.0, 1.0])) and torch.allclose(aligned[1], torch.tensor([2.0]))
    agreeing = [torch.tensor([1.0, 1.0]), torch.tensor([0.5])]
    same, cosine = g.align(agreeing, ce)
    assert cosine > 0 and all(torch.equal(a, b) for a, b in zip(same, agreeing))


def test_aligned_gradient_never_opposes_the_ce_gradient_on_random_vectors():
    gen = torch.Generator().manual_seed(3)
    conflicts = 0
    for _ in range(200):
        ce = [torch.randn(5, generator=gen), torch.randn(2, 3, generator=gen)]
        kd = [torch.randn(5, generator=gen), torch.randn(2, 3, generator=gen)]
        aligned, cosine = g.align(kd, ce)
        conflicts += cosine < 0
        inner = sum((a * c).sum() for a, c in zip(aligned, ce))
        assert inner >= -1e-5
        if cosine < 0:
            assert inner.abs() < 1e-5  # exactly orthogonal after the projection
    assert conflicts > 20  # the test saw conflicts to resolve


def test_gaml_gradients_on_tiny_align_with_ce():
    model = make_tiny(train=True)
    model.eval()  # no dropout: the two gradients come from the same function
    batch = make_batch(model)
    grads = g.gaml_gradients(model, batch, temperature=1.0)
    assert len(grads.names) == len(grads.ce) == len(grads.kd) == sum(1 for _ in model.parameters())
    assert grads.kd_loss > 0 and grads.ce_loss > 0
    step, cosine = g.combine(grads.ce, grads.kd, kd_weight=1.0, aligned=True)
    kd_part = [s - c for s, c in zip(step, grads.ce)]
    assert sum((k * c).sum() for k, c in zip(kd_part, grads.ce)) >= -1e-6
    plain, cosine_plain = g.combine(grads.ce, grads.kd, aligned=False)
    assert cosine == cosine_plain
    assert all(torch.allclose(p, c + k) for p, c, k in zip(plain, grads.ce, grads.kd))
    # the ce gradient is the one of the summed exit losses
    model.zero_grad()
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    exit_losses(logits, batch["labels"]).sum().backward()
    for (name, p), ce in zip(model.named_parameters(), grads.ce):
        assert torch.allclose(p.grad if p.grad is not None else torch.zeros_like(p), ce, atol=1e-6), name


def test_gaml_gradients_skip_frozen_parameters():
    model = make_tiny()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("exits."))
    grads = g.gaml_gradients(model, make_batch(model))
    assert grads.names and all(n.startswith("exits.") for n in grads.names)
