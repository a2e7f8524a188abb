"""The six Table I systems as training methods (metabert.training.methods.peers): each method's own rule on tiny."""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny
from metabert.training.methods import compression as comp
from metabert.training.methods import options as opts
from metabert.training.methods import exit_peers as peers
from metabert.training.methods import ENTRIES, entry
from metabert.training.methods import peers as pm
from metabert.model.multi_exit import exit_losses
from test_compression import batch_for, tiny_teacher

PEERS = [name for name, e in ENTRIES.items() if e.target.startswith("peers:")]


def grads(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_static_methods_refuse_to_run_without_a_teacher():
    with pytest.raises(ValueError, match="--teacher DIR"):
        pm.DistilBert(2).build(make_tiny(("a", "b")))


def test_distilbert_builds_the_alternate_student_and_its_loss():
    teacher = tiny_teacher(6)
    method = pm.DistilBert(2, opts.DistilConfig(alpha=0.0), teacher=teacher)
    student = method.build(make_tiny(("a", "b")))
    assert student.num_layers == 3
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight,
                       teacher.encoder.encoder.layer[2].output.dense.weight)  # layers 0, 2, 4
    batch = batch_for(teacher)
    with torch.no_grad():
        ce = F.cross_entropy(student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1],
                             batch["labels"])
        assert method.loss(student, batch, 0).item() == pytest.approx(ce.item(), rel=1e-5)
        # a student equal to its teacher has nothing to distil: only the CE share is left
        same = pm.DistilBert(2, opts.DistilConfig(alpha=0.5, cosine=1.0), teacher=teacher)
        full_ce = F.cross_entropy(teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1],
                                  batch["labels"])
        assert same.loss(teacher, batch, 0).item() == pytest.approx(0.5 * full_ce.item(), rel=1e-4)


def test_pkd_loss_adds_the_patient_term_at_the_skipped_layers():
    teacher = tiny_teacher(6)
    plain = pm.PatientKD(2, opts.PKDConfig(beta=0.0), teacher=teacher)
    patient = pm.PatientKD(2, opts.PKDConfig(beta=10.0), teacher=teacher)
    student = plain.build(make_tiny(("a", "b")))
    assert [l.output.dense.weight for l in student.encoder.encoder.layer][0] is not None
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight,
                       teacher.encoder.encoder.layer[1].output.dense.weight)  # the first k layers
    batch = batch_for(teacher)
    with torch.no_grad():
        s = comp.layer_states(student, batch)
        t = comp.layer_states(teacher, batch)
        expected = 10.0 * comp.patient_loss([s[0], s[1]], [t[1], t[3]])
        assert (patient.loss(student, batch, 0) - plain.loss(student, batch, 0)).item() == pytest.approx(
            expected.item(), rel=1e-4)


def test_theseus_replaces_at_the_scheduled_rate_and_trains_only_successor_layers_while_replacing():
    teacher = tiny_teacher(6)
    method = pm.Theseus(2, opts.TheseusConfig("linear", rate=0.2, until=0.5), teacher=teacher, total_steps=10)
    assert [round(method.rate(s), 2) for s in range(0, 10, 2)] == [0.2, 0.52, 0.84, 1.0, 1.0]
    student = method.build(make_tiny(("a", "b"))).train()
    batch = batch_for(teacher)
    for seed in range(3):  # draws with and without replaced modules
        torch.manual_seed(seed)
        student.zero_grad(set_to_none=True)
        method.loss(student, batch, 0, step=0).backward()
        touched = grads(student)
        assert all(n.startswith("encoder.encoder.layer.") for n in touched)
    always = pm.Theseus(2, opts.TheseusConfig("constant", rate=0.999, until=1.0), teacher=teacher, total_steps=10)
    torch.manual_seed(0)
    student.zero_grad(set_to_none=True)
    always.loss(student, batch, 0, step=0).backward()
    touched = grads(student)
    assert touched and all(n.startswith("encoder.encoder.layer.") for n in touched)
    assert not any(p.grad is not None for p in teacher.parameters())  # the predecessor never learns
    student.zero_grad(set_to_none=True)
    method.loss(student, batch, 1, step=9).backward()  # successor fine-tuning: every part of the student
    touched = grads(student)
    assert any(n.startswith("encoder.embeddings.") for n in touched) and any(n.startswith("exits.2.") for n in touched)
    assert all(p.requires_grad for p in student.parameters())  # frozen only for the call


def test_theseus_draws_modules_at_the_rate():
    teacher = tiny_teacher(6)
    method = pm.Theseus(1, opts.TheseusConfig("constant", rate=0.5, until=1.0), teacher=teacher, total_steps=10)
    student = method.build(make_tiny(("a", "b"))).eval()
    batch = batch_for(teacher)
    seen = set()
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(30):
            seen.add(round(method.loss(student, batch, 0, 0).item(), 5))
    assert len(seen) > 2  # different mixes of successor and predecessor modules


def test_layerdrop_trains_full_depth_and_exports_every_other_layer():
    model = tiny_teacher(6)
    method = pm.LayerDrop(2, opts.LayerDropConfig(rate=0.5, prune=0.5))
    assert method.build(model) is model
    batch = batch_for(model)
    model.eval()
    with torch.no_grad():
        full = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[-1],
                               batch["labels"])
        assert method.loss(model, batch, 0).item() == pytest.approx(full.item(), rel=1e-6)  # nothing dropped at eval
    pruned = method.final_model(model)
    assert pruned.num_layers == 3 and model.num_layers == 6
    assert torch.equal(pruned.encoder.encoder.layer[2].output.dense.weight, model.encoder.encoder.layer[4].output.dense.weight)


def test_shallow_deep_loss_weights_grow_with_the_epochs():
    model = make_tiny()
    batch = batch_for(model)
    method = pm.ShallowDeep(4)
    with torch.no_grad():
        losses = exit_losses(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"])
        for epoch in range(4):
            expected = (peers.sdn_weights(3, epoch, 4) * losses).sum()
            assert method.loss(model, batch, epoch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gaml_step_gradient_never_opposes_the_ce_gradient():
    model = make_tiny(("a", "b"), seed=2)  # eval: no dropout, the same function for both gradients
    batch = batch_for(model)
    method = pm.Gaml(2, opts.GamlConfig(kd_weight=5.0))
    info = method.before_step(model, batch, 0, 0)
    assert method.update_batches(batch, 0) == [None] and {"batch_loss", "gaml_cosine"} <= set(info)
    step = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    exit_losses(logits, batch["labels"]).sum().backward()
    ce = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    kd_part = sum(((step[n] - ce[n]) * ce[n]).sum() for n in ce)
    assert kd_part >= -1e-5
    unaligned = pm.Gaml(2, opts.GamlConfig(kd_weight=5.0, align=False))
    unaligned.before_step(model, batch, 0, 0)
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    if info["gaml_cosine"] < 0:  # the alignment changed the step
        assert any(not torch.allclose(plain[n], step[n]) for n in step)


class Cut(Exception):
    """Stands for a run killed right after a mid-epoch state save."""


@pytest.fixture(scope="module")
def run_options(tmp_path_factory):
    """A small custom task and the tiny full-depth teacher trained on it (``--method last``)."""
    from metabert.training.config import TrainConfig
    from metabert.training.trainer import train

    folder = tmp_path_factory.mktemp("peers")
    rows = [(f"sentence number {i} " + "word " * (i % 7), "pos" if i % 3 else "neg") for i in range(48)]
    data = folder / "train.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    options = {"task": "custom", "train_file": str(data), "dev_file": str(data), "text_columns": ("text",),
               "label_column": "label", "model": "tiny", "epochs": 2, "batch_size": 8, "learning_rate": 1e-3,
               "seed": 3}
    train(TrainConfig(**options, output=str(folder / "teacher"), method="last"), progress=False)
    return folder, options


@pytest.mark.parametrize("name", PEERS)
def test_each_system_saves_loads_and_resumes_exactly(name, run_options, tmp_path, monkeypatch):
    import metabert.training.trainer as trainer
    from safetensors.torch import load_file

    from metabert.model.multi_exit import MultiExitBert
    from metabert.training.config import TrainConfig
    from metabert.training.trainer import train

    folder, options = run_options
    teacher = {"teacher": str(folder / "teacher")} if entry(name).needs_teacher else {}

    def config(out):
        return TrainConfig(**options, **teacher, method=name, output=str(tmp_path / out), save_every=2)

    torch.set_num_threads(1)
    straight = train(config("straight"), progress=False)
    original = trainer.save_state

    def save_then_die(directory, cfg, model, optimizers, scheduler, run):
        original(directory, cfg, model, optimizers, scheduler, run)
        if run.epoch == 1 and run.batch > 0:
            raise Cut

    monkeypatch.setattr(trainer, "save_state", save_then_die)
    with pytest.raises(Cut):
        train(config("cut"), progress=False)
    monkeypatch.setattr(trainer, "save_state", original)
    train(config("cut"), progress=False, resume=True)
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = MultiExitBert.from_pretrained(straight["output"])  # the saved model loads at its own depth
    assert model.num_layers == (3 if name in ("shallow-deep", "gaml") else 2 if name == "layerdrop" else 1)
    assert len(straight["best"]["dev_per_exit"]) == model.num_layers
