"""The static systems' mechanisms (metabert.training.methods.compression) on tiny models: student initialisation,
KD and patient losses, Theseus' replacement, LayerDrop's dropping and pruning."""

import pytest
import torch
from transformers import AutoModel

from conftest import make_tiny
from metabert.training.methods import compression as c
from metabert.training.methods import options as opts
from metabert.model.backbones import Backbone, load_backbone, tiny_config
from metabert.model.multi_exit import MultiExitBert


def tiny_teacher(layers: int = 6, seed: int = 0) -> MultiExitBert:
    """make_tiny's model but ``layers`` deep (the 6 -> 3 of our Table I on tiny weights)."""
    tiny = load_backbone("tiny", seed=seed)
    config = tiny_config(len(tiny.tokenizer))
    config.num_hidden_layers = layers
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = AutoModel.from_config(config)
    encoder.pooler = None
    return MultiExitBert.from_backbone(Backbone(encoder, tiny.tokenizer, "tiny"), ["a", "b"], seed=seed).eval()


def batch_for(model, labels=(0, 1, 1)):
    texts = ["one text", "another longer text here", "third"][: len(labels)]
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor(labels)}


def test_student_layers_rules():
    assert c.student_layers(6, 3) == [0, 2, 4]  # one out of two
    assert c.student_layers(6, 3, "first") == [0, 1, 2]
    assert c.student_layers(12, 6, "spread") == [0, 2, 4, 7, 9, 11]  # DistilBERT's extraction script
    assert c.student_layers(6, 3, "spread") == [0, 2, 5]
    with pytest.raises(ValueError, match="between 1 and 6"):
        c.student_layers(6, 7)
    with pytest.raises(ValueError, match="unknown student initialisation 'odd'.*alternate"):
        c.student_layers(6, 3, "odd")


def test_every_other_follows_the_paper_rule():
    assert c.every_other(6, 0.5) == [0, 2, 4]  # depths 2, 4, 6 dropped
    assert c.every_other(12, 0.25) == [0, 1, 2, 4, 5, 6, 8, 9, 10]  # d ≡ 0 (mod 4) dropped
    with pytest.raises(ValueError, match="keeps none"):
        c.every_other(6, 0.9)


def test_select_layers_copies_the_chosen_layers_and_keeps_the_classifier():
    teacher = tiny_teacher(6)
    student = c.select_layers(teacher, [0, 2, 4])
    assert student.num_layers == 3 and teacher.num_layers == 6
    assert student.config.backbone_config["num_hidden_layers"] == 3
    t_layers, s_layers = teacher.encoder.encoder.layer, student.encoder.encoder.layer
    for s, t in zip(s_layers, [t_layers[0], t_layers[2], t_layers[4]]):
        for (name, a), b in zip(s.state_dict().items(), t.state_dict().values()):
            assert torch.equal(a, b), name
    assert torch.equal(student.exits[-1].classifier.weight, teacher.exits[-1].classifier.weight)
    assert torch.equal(student.exits[0].classifier.weight, teacher.exits[0].classifier.weight)
    with torch.no_grad():  # a copy: training the student leaves the teacher as it was
        s_layers[0].output.dense.weight.add_(1.0)
    assert not torch.equal(s_layers[0].output.dense.weight, t_layers[0].output.dense.weight)
    assert student.tokenizer is teacher.tokenizer
    with pytest.raises(ValueError, match="increasing"):
        c.select_layers(teacher, [2, 0])


def test_select_layers_model_runs_the_chosen_layers(tmp_path):
    teacher = tiny_teacher(6)
    batch = batch_for(teacher)
    student = c.select_layers(teacher, [0, 2, 4])
    keep = torch.tensor([True, False, True, False, True, False])
    with torch.no_grad():
        mixed = c.layerdrop_logits(teacher, batch, keep)
        # the same layers, but the pruned model's last exit is the teacher's last (kept) classifier
        got = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1]
    assert torch.allclose(got, mixed, atol=1e-6)
    student.save_pretrained(tmp_path / "s")
    again = MultiExitBert.from_pretrained(tmp_path / "s")
    with torch.no_grad():
        assert torch.allclose(again(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1], got,
                              atol=1e-6)


def test_kd_loss_is_zero_when_logits_agree_and_positive_otherwise():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    assert c.kd_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = logits.flip(0)
    scaled, plain = c.kd_loss(other, logits, 2.0), c.kd_loss(other, logits, 2.0, scale=False)
    assert plain.item() > 0 and scaled.item() == pytest.approx(4 * plain.item(), rel=1e-5)
    expected = (logits.div(2).softmax(-1) * (logits.div(2).log_softmax(-1) - other.div(2).log_softmax(-1))).sum(-1).mean()
    assert plain.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        c.kd_loss(logits, logits, 0.0)


def test_kd_loss_does_not_move_the_teacher():
    student = torch.randn(4, 2, requires_grad=True)
    teacher = torch.randn(4, 2, requires_grad=True)
    c.kd_loss(student, teacher, 3.0).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_patient_loss_zero_for_equal_states_and_scale_free():
    gen = torch.Generator().manual_seed(1)
    states = [torch.randn(4, 8, generator=gen) for _ in range(2)]
    assert c.patient_loss(states, [s * 3.0 for s in states]).item() == pytest.approx(0.0, abs=1e-6)  # normalised
    other = [torch.randn(4, 8, generator=gen) for _ in range(2)]
    got = c.patient_loss(states, other)
    expected = sum((torch.nn.functional.normalize(s, dim=-1) - torch.nn.functional.normalize(t, dim=-1))
                   .pow(2).sum(-1).mean() for s, t in zip(states, other))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and got.item() > 0
    with pytest.raises(ValueError, match="at least one pair"):
        c.patient_loss([], [])


def test_pkd_skip_pairs_and_states():
    assert c.pkd_skip_pairs(12, 6) == [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9)]  # teacher 2, 4, 6, 8, 10
    assert c.pkd_skip_pairs(6, 3) == [(0, 1), (1, 3)]
    with pytest.raises(ValueError, match="multiple"):
        c.pkd_skip_pairs(6, 4)
    teacher = tiny_teacher(6)
    batch = batch_for(teacher)
    with torch.no_grad():
        cls = c.layer_states(teacher, batch, "cls")
        pooled = c.layer_states(teacher, batch, "pooled")
        hidden = teacher.hidden_states(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert len(cls) == 6 and torch.equal(cls[3], hidden[3][:, 0])
    assert torch.allclose(pooled[3], teacher.pool(hidden[3], batch["attention_mask"]))
    # a student that is the teacher's own copy has no patient loss at any pair of layers
    with torch.no_grad():
        same = c.layer_states(c.select_layers(teacher, list(range(6))), batch)
    pairs = c.pkd_skip_pairs(6, 3)
    assert c.patient_loss([same[j] for _, j in pairs], [cls[j] for _, j in pairs]).item() == pytest.approx(0.0, abs=1e-6)
    assert c.patient_loss([same[i] for i, _ in pairs], [cls[j] for _, j in pairs]).item() > 0


def test_cosine_hidden_loss():
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(2, 4, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert c.cosine_hidden_loss(h, 2 * h, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert c.cosine_hidden_loss(h, -h, mask).item() == pytest.approx(2.0, abs=1e-6)
    noisy = h.clone()
    noisy[0, 3] = -h[0, 3]  # a padding position: ignored
    assert c.cosine_hidden_loss(h, noisy, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_replacement_rate_follows_the_curriculum():
    linear = opts.ReplacementSchedule("linear", rate=0.3, until=0.5)
    rates = [linear.rate_at(s, 100) for s in range(100)]
    assert rates[0] == pytest.approx(0.3)
    assert rates[25] == pytest.approx(0.3 + 0.7 * 0.5)  # k t + b with k = 0.7 / 50
    assert all(b >= a for a, b in zip(rates, rates[1:]))  # never decreases
    assert rates[50:] == [1.0] * 50 and linear.replacing(49, 100) and not linear.replacing(50, 100)
    constant = opts.ReplacementSchedule("constant", rate=0.5, until=0.6)
    assert [constant.rate_at(s, 10) for s in range(10)] == [0.5] * 6 + [1.0] * 4
    for bad in ({"kind": "cosine"}, {"rate": 0.0}, {"until": 1.5}):
        with pytest.raises(ValueError):
            opts.ReplacementSchedule(**bad)


def test_theseus_mixes_successor_and_predecessor_modules():
    predecessor = tiny_teacher(6)
    successor = c.select_layers(predecessor, [0, 1, 2])
    batch = batch_for(predecessor)
    assert [list(m) for m in c.theseus_modules(6, 3)] == [[0, 1], [2, 3], [4, 5]]
    with torch.no_grad():
        all_successor = c.theseus_logits(successor, predecessor, batch, torch.ones(3, dtype=torch.bool))
        direct = successor(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1]
        none_replaced = c.theseus_logits(successor, predecessor, batch, torch.zeros(3, dtype=torch.bool))
        full = predecessor(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1]
        mixed = c.theseus_logits(successor, predecessor, batch, torch.tensor([True, False, False]))
    assert torch.allclose(all_successor, direct, atol=1e-6)
    assert torch.allclose(none_replaced, full, atol=1e-6)  # the predecessor's own layers and classifier
    assert not torch.allclose(mixed, full) and not torch.allclose(mixed, direct)
    with pytest.raises(ValueError, match="one flag per successor layer"):
        c.theseus_logits(successor, predecessor, batch, torch.ones(2, dtype=torch.bool))


def test_theseus_gradients_reach_only_the_replacing_successor_layers():
    predecessor = tiny_teacher(6)
    successor = c.select_layers(predecessor, [0, 1, 2]).train()
    batch = batch_for(predecessor)
    logits = c.theseus_logits(successor, predecessor, batch, torch.tensor([False, True, False]))
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    touched = {n.split(".")[3] for n, p in successor.named_parameters()
               if n.startswith("encoder.encoder.layer.") and p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"1"}


def test_layerdrop_drops_whole_layers_at_the_rate_and_none_at_eval():
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([c.layerdrop_keep(6, 0.3, generator=gen) for _ in range(4000)])  # (N, L)
    dropped = 1 - draws.float().mean(0)
    assert torch.allclose(dropped, torch.full((6,), 0.3), atol=0.03)
    assert draws.dtype == torch.bool and draws.shape == (4000, 6)
    assert c.layerdrop_keep(6, 0.3, training=False).all()
    assert c.layerdrop_keep(6, 0.0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        c.layerdrop_keep(6, 1.0)


def test_layerdrop_logits_skip_dropped_layers():
    model = make_tiny()  # 3 layers
    batch = batch_for(model)
    with torch.no_grad():
        every = c.layerdrop_logits(model, batch, torch.ones(3, dtype=torch.bool))
        full = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1]
        skipped = c.layerdrop_logits(model, batch, torch.tensor([True, False, True]))
    assert torch.allclose(every, full, atol=1e-6) and not torch.allclose(skipped, full)
