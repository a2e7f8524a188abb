"""The six Table I systems as training methods (``--method``); their mechanisms are in
``metabert.training.methods.compression`` and ``metabert.training.methods.exit_peers``, their readings in docs/METHODS_TABLE1.md.

Static systems (``distilbert``, ``pkd``, ``theseus``, ``layerdrop``) end as a model of half the
backbone's depth trained on its last exit (``static`` in the registry), and ``final_model`` gives the model that
is evaluated and saved. The three that learn from the fine-tuned full-depth model take it as
``teacher`` (``--teacher DIR``) and build their student from it (``build``). Dynamic systems
(``shallow-deep``, ``gaml``) train every exit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metabert.training.methods import compression as comp
from metabert.training.methods import options as opts
from metabert.training.methods import exit_peers as peers
from metabert.data.batching import model_inputs
from metabert.training.methods.base import Method
from metabert.model.multi_exit import MultiExitBert, exit_losses


def _run(model: MultiExitBert, batch: dict) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's output as the exits read it, (B, T, H) each, and the last exit's logits (B, C)."""
    hidden, inputs = model.begin(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    states = []
    for i in range(model.num_layers):
        hidden = model.run_layer(i, hidden, inputs)
        states.append(model.exit_input(hidden))
    return states, model.exit_logits(model.num_layers - 1, hidden, inputs)


class StaticMethod(Method):
    """Base of the static systems: the last exit is the model's only trained exit."""

    default_init = "first"
    section = ""  # the TrainConfig section holding the system's own options

    def __init__(self, epochs: int = 1, config=None, student: opts.StudentConfig | None = None,
                 teacher: MultiExitBert | None = None):
        super().__init__(epochs)
        self.student = student or opts.StudentConfig()
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def _teacher(self) -> MultiExitBert:
        if self.teacher is None:
            raise ValueError(f"--method {self.name} learns from a fine-tuned model: give it with --teacher DIR "
                             "(e.g. the checkpoint of --method last at full depth, same seed)")
        return self.teacher

    def student_layers(self, teacher_layers: int) -> list[int]:
        return comp.student_layers(teacher_layers, self.student.depth(teacher_layers),
                                   self.student.init or self.default_init)

    def build(self, model: MultiExitBert) -> MultiExitBert:
        """The model training starts from: here the student made of the teacher's layers."""
        teacher = self._teacher()
        if tuple(teacher.config.label_names) != tuple(model.config.label_names):
            raise ValueError(f"--teacher was trained on classes {list(teacher.config.label_names)}, this task has "
                             f"{list(model.config.label_names)}")
        student = comp.select_layers(teacher, self.student_layers(teacher.num_layers))
        student.with_config(task=model.config.task, calibration=model.config.calibration)
        for p in student.parameters():  # the teacher's copies are frozen
            p.requires_grad_(True)
        return student.train(model.training)

    @classmethod
    def from_options(cls, epochs=1, meta=None, config=None, teacher=None, total_steps=1):
        return cls(epochs, getattr(config, cls.section, None), student=getattr(config, "student", None), teacher=teacher)


class DistilBert(StaticMethod):
    """DistilBERT (Sanh et al. 2019), task-specific: a student of one teacher layer out of two,
    (1 - α) CE + α T² KL(teacher ‖ student) + w_cos (1 - cos) on the last hidden states."""

    name = "distilbert"
    section = "distil"
    default_init = "alternate"

    def __init__(self, epochs=1, config=None, student=None, teacher=None):
        super().__init__(epochs, student=student, teacher=teacher)
        self.config = config or opts.DistilConfig()

    def loss(self, model, batch, epoch, step=0):
        c = self.config
        states, logits = _run(model, batch)
        with torch.no_grad():
            t_states, t_logits = _run(self._teacher(), batch)
        loss = (1 - c.alpha) * F.cross_entropy(logits, batch["labels"]) + c.alpha * comp.kd_loss(
            logits, t_logits, c.temperature)
        if c.cosine:
            loss = loss + c.cosine * comp.cosine_hidden_loss(states[-1], t_states[-1], batch["attention_mask"])
        return loss


class PatientKD(StaticMethod):
    """BERT-PKD, PKD-Skip (Sun et al. 2019, Eq. 4): (1 - α) CE + α L_DS + β L_PT, the patient loss on
    the normalised states of student layers 1..k-1 and teacher layers 2, 4, ..."""

    name = "pkd"
    section = "pkd"

    def __init__(self, epochs=1, config=None, student=None, teacher=None):
        super().__init__(epochs, student=student, teacher=teacher)
        self.config = config or opts.PKDConfig()

    def _states(self, model, batch, states):
        if self.config.state == "cls":
            return [h[:, 0] for h in states]
        return [model.pool(h, batch["attention_mask"]) for h in states]

    def loss(self, model, batch, epoch, step=0):
        c, teacher = self.config, self._teacher()
        states, logits = _run(model, batch)
        with torch.no_grad():
            t_states, t_logits = _run(teacher, batch)
        loss = (1 - c.alpha) * F.cross_entropy(logits, batch["labels"]) + c.alpha * comp.kd_loss(
            logits, t_logits, c.temperature, scale=False)
        pairs = comp.pkd_skip_pairs(teacher.num_layers, model.num_layers)
        if pairs and c.beta:
            s, t = self._states(model, batch, states), self._states(teacher, batch, t_states)
            loss = loss + c.beta * comp.patient_loss([s[i] for i, _ in pairs], [t[j] for _, j in pairs])
        return loss


class Theseus(StaticMethod):
    """BERT-of-Theseus (Xu et al. 2020): each successor layer replaces its module of predecessor
    (teacher) layers with rate r (``TheseusConfig``); while r < 1 only the successor's layers learn
    (embeddings and classifier frozen, the paper's "shared" ones), then the successor is fine-tuned
    alone. ``total_steps`` (the run's Adam steps) places the schedule."""

    name = "theseus"
    section = "theseus"

    def __init__(self, epochs=1, config=None, student=None, teacher=None, total_steps: int = 1):
        super().__init__(epochs, student=student, teacher=teacher)
        self.config = config or opts.TheseusConfig()
        self.schedule = self.config.replacement()
        self.total_steps = total_steps

    @classmethod
    def from_options(cls, epochs=1, meta=None, config=None, teacher=None, total_steps=1):
        return cls(epochs, getattr(config, "theseus", None), student=getattr(config, "student", None), teacher=teacher,
                   total_steps=total_steps)

    def rate(self, step: int) -> float:
        return self.schedule.rate_at(step, self.total_steps)

    def loss(self, model, batch, epoch, step=0):
        predecessor = self._teacher().train(model.training)  # dropout as in the authors' whole-model train()
        rate = self.rate(step)
        if rate >= 1.0:  # successor fine-tuning: the student alone, every parameter
            return F.cross_entropy(_run(model, batch)[1], batch["labels"])
        replace = torch.rand(model.num_layers) < rate  # one draw per module for the batch
        logits = _frozen_ends(model, lambda: comp.theseus_logits(model, predecessor, batch, replace))
        loss = F.cross_entropy(logits, batch["labels"])
        if not replace.any():  # all predecessor modules drawn: nothing of the student ran, a zero-gradient step
            loss = loss + 0.0 * sum(p.sum() for p in model.adapter.layers(model.encoder).parameters())
        return loss


def _frozen_ends(model: MultiExitBert, forward):
    """Run ``forward`` with every parameter but the encoder layers' out of the graph (embeddings and
    exit heads get no gradient, so AdamW leaves them as they are)."""
    layer_ids = {id(p) for p in model.adapter.layers(model.encoder).parameters()}
    frozen = [p for p in model.parameters() if id(p) not in layer_ids and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return forward()
    finally:
        for p in frozen:
            p.requires_grad_(True)


class LayerDrop(StaticMethod):
    """LayerDrop (Fan et al. 2019): the full-depth model fine-tuned on its last exit with whole layers
    dropped at rate p, then every other layer pruned (``final_model``) with no further fine-tuning."""

    name = "layerdrop"
    section = "layerdrop"

    def __init__(self, epochs=1, config=None, student=None, teacher=None):
        super().__init__(epochs, student=student, teacher=teacher)
        self.config = config or opts.LayerDropConfig()

    def build(self, model):
        return model  # trained at full depth, from the backbone

    def loss(self, model, batch, epoch, step=0):
        keep = comp.layerdrop_keep(model.num_layers, self.config.rate, training=model.training)
        return F.cross_entropy(comp.layerdrop_logits(model, batch, keep), batch["labels"])

    def final_model(self, model):
        return comp.select_layers(model, comp.every_other(model.num_layers, self.config.prune))


class ShallowDeep(Method):
    """Shallow-Deep Networks (Kaya et al. 2019): Σ τ_i CE_i with τ_i growing over the epochs to the
    exit's relative depth, the last exit 1 (``exit_peers.sdn_weights``); exits by max-softmax
    (the ``max-prob`` policy)."""

    name = "shallow-deep"

    def loss(self, model, batch, epoch, step=0):
        return peers.sdn_loss(model(**model_inputs(batch)), batch["labels"], epoch, self.epochs)


class Gaml(Method):
    """GAML-BERT (Zhu et al. 2021): Σ CE_i + λ mutual distillation between the exits, the
    distillation gradient aligned with the cross-entropy gradient (``exit_peers.align``) in
    ``before_step``, which leaves the step's gradient in ``.grad``."""

    name = "gaml"

    def __init__(self, epochs: int = 1, config=None):
        super().__init__(epochs)
        self.config = config or opts.GamlConfig()

    @classmethod
    def from_options(cls, epochs=1, meta=None, config=None, teacher=None, total_steps=1):
        return cls(epochs, getattr(config, "gaml", None))

    def loss(self, model, batch, epoch, step=0):
        """The unaligned objective (for reporting and tests); training follows ``before_step``."""
        logits = model(**model_inputs(batch))
        return exit_losses(logits, batch["labels"]).sum() + self.config.kd_weight * peers.mutual_kd_loss(
            logits, self.config.temperature)

    def update_batches(self, batch, epoch):
        return [None]

    def before_step(self, model, batch, epoch, step, world=None, diagnose=False, optimizer=None) -> dict:
        from metabert.training import distributed as distributed

        world = world or distributed.World()
        part, weight = distributed.shard(batch, world)
        grads = peers.gaml_gradients(model, part, self.config.temperature, weight)
        ce = distributed.all_reduce_sum(dict(zip(grads.names, grads.ce)), world)
        kd = distributed.all_reduce_sum(dict(zip(grads.names, grads.kd)), world)
        ce_list = [ce[n] / world.size for n in grads.names]
        kd_list = [kd[n] / world.size for n in grads.names]
        step_grad, cosine = peers.combine(ce_list, kd_list, self.config.kd_weight, self.config.align)
        params = dict(model.named_parameters())
        for p in model.parameters():
            p.grad = None
        for name, g in zip(grads.names, step_grad):
            params[name].grad = g
        return {"batch_loss": grads.ce_loss + self.config.kd_weight * grads.kd_loss, "gaml_cosine": cosine}

    def summarise(self, diagnostics: list[dict]) -> tuple[str, dict]:
        """The epoch's record of the alignment: mean cosine of g_kd and g_ce, and the steps where they
        conflicted (the steps GA changed)."""
        cosines = [d["gaml_cosine"] for d in diagnostics if "gaml_cosine" in d]
        return "gaml", {"cosine_kd_ce": sum(cosines) / len(cosines) if cosines else None,
                        "conflicting_steps": sum(c < 0 for c in cosines), "steps": len(cosines)}


def load_teacher(path: str | None, name: str) -> MultiExitBert | None:
    """The ``--teacher`` checkpoint for method ``name`` (None where the method needs none); a clear
    error where it needs one and none (or no checkpoint) is given."""
    from metabert.training.methods import entry

    if not entry(name).needs_teacher:
        return None
    if not path:
        raise ValueError(f"--method {name} learns from a fine-tuned model: give it with --teacher DIR "
                         "(e.g. the checkpoint of --method last at full depth, same seed)")
    return MultiExitBert.from_pretrained(path)
