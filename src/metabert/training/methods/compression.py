"""Static compression of a fine-tuned multi-exit model, the static rows of MetaBERT's Table I.

Four systems, each read from its own paper (docs/METHODS_TABLE1.md writes down every reading):

- **DistilBERT** (Sanh et al. 2019, arXiv:1910.01108): a student with one layer out of two of the
  teacher, trained on the labels and on the teacher's temperature-softened predictions (``kd_loss``),
  optionally with the cosine loss between the students' and the teacher's hidden states
  (``cosine_hidden_loss``).
- **BERT-PKD** (Sun et al. 2019, EMNLP): the same, plus the *patient* loss between the normalised
  [CLS] states of the student's layers and those of the teacher at the layers the student skips
  over ("PKD-Skip": teacher layers 2, 4, ... for a student of half the depth; ``patient_loss``).
- **BERT-of-Theseus** (Xu et al. 2020, EMNLP): each successor layer stands for a module of
  consecutive predecessor layers and replaces it at random with a rate that is constant or grows
  along a linear curriculum (``ReplacementSchedule``, ``theseus_logits``).
- **LayerDrop** (Fan et al. 2019, ICLR 2020): whole layers dropped at random in training
  (``layerdrop_keep``, ``layerdrop_logits``), then "every other" layer pruned at inference with no
  further fine-tuning (``every_other``, ``select_layers``).

Our backbone has 6 layers, so the papers' 12 -> 6 is 6 -> 3 here. Functions only: the training
methods that use them live in ``metabert.training.methods.core``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from metabert.model.multi_exit import MultiExitBert
from metabert.training.methods.options import (INITS, STATES)



# ------------------------------------------------------------------------------ student layers
def student_layers(teacher_layers: int, student_layers: int, rule: str = "alternate") -> list[int]:
    """0-based teacher layers a student of ``student_layers`` layers starts from.

    ``alternate``: one layer out of ``teacher_layers // student_layers`` from the bottom (DistilBERT's
    "taking one layer out of two"; 6 -> 3: layers 1, 3, 5, i.e. [0, 2, 4]); ``first``: the first k
    layers (BERT-PKD's and BERT-of-Theseus' initialisation); ``spread``: evenly spread with the first
    and last kept, round(i (L-1) / (k-1)) (for 12 -> 6 this is [0, 2, 4, 7, 9, 11], the layers
    DistilBERT's released extraction script takes; 6 -> 3: [0, 2, 5])."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs between 1 and {teacher_layers} layers (the teacher's), got {student_layers}")
    if rule == "first":
        return list(range(student_layers))
    if rule == "alternate":
        stride = teacher_layers // student_layers
        return [i * stride for i in range(student_layers)]
    if rule == "spread":
        if student_layers == 1:
            return [teacher_layers - 1]
        return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]
    raise ValueError(f"unknown student initialisation {rule!r}; choose one of: {', '.join(INITS)}")


def every_other(num_layers: int, rate: float = 0.5) -> list[int]:
    """LayerDrop's "every other" pruning (Fan et al. 2019, Sec. 4.2): pruning with rate p drops the
    layers at depth d (1-based) with d ≡ 0 (mod ⌊1/p⌋). Returns the 0-based layers kept; 6 layers
    at p = 0.5 keep [0, 2, 4]."""
    if not 0 < rate < 1:
        raise ValueError(f"a pruning rate must be in (0, 1), got {rate}")
    period = math.floor(1 / rate)
    kept = [d - 1 for d in range(1, num_layers + 1) if d % period != 0]
    if not kept:
        raise ValueError(f"pruning {num_layers} layers at rate {rate} keeps none")
    return kept


def select_layers(model: MultiExitBert, layers: list[int]) -> MultiExitBert:
    """A new model (the original untouched) made of ``model``'s embeddings, the given layers in
    order, and their exits, with the original *last* exit (the trained classifier) as its last exit:
    the student initialisation of DistilBERT and PKD, Theseus' successor, LayerDrop's pruned model."""
    count = model.num_layers
    if not layers or sorted(set(layers)) != list(layers) or not all(0 <= i < count for i in layers):
        raise ValueError(f"layers must be increasing 0-based layer numbers below {count}, got {layers}")
    tokenizer, model.tokenizer = model.tokenizer, None  # shared, not copied
    try:
        student = copy.deepcopy(model)
    finally:
        model.tokenizer = tokenizer
    student.tokenizer = tokenizer
    old = list(student.adapter.layers(student.encoder))
    student.adapter.set_layers(student.encoder, nn.ModuleList(old[i] for i in layers))
    heads = list(student.exits)
    student.exits = nn.ModuleList([heads[i] for i in layers[:-1]] + [heads[-1]])
    types = getattr(student.encoder.config, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == count:
        student.encoder.config.layer_types = [types[i] for i in layers]
    student.truncate(len(layers))  # the stored config now says len(layers) layers
    return student


# ------------------------------------------------------------------------------ distillation losses
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            scale: bool = True) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)), mean over the batch: (B, C), (B, C) -> (). The teacher is
    detached. ``scale`` multiplies by T² (Hinton et al. 2015, as DistilBERT does) so that its gradient
    keeps its size whatever T; BERT-PKD's Eq. 2 has no such factor (``scale=False``). The KL differs
    from the soft cross-entropy the papers write only by the teacher's entropy, a constant, so the
    gradient is the same and the loss is 0 where the two agree."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = (teacher_logits.detach() / temperature).log_softmax(-1)
    loss = F.kl_div((student_logits / temperature).log_softmax(-1), target, log_target=True, reduction="batchmean")
    return loss * temperature ** 2 if scale else loss


def patient_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor]) -> torch.Tensor:
    """BERT-PKD's L_PT (Sun et al. 2019, Eq. 3): for each (student layer, teacher layer) pair, the
    squared distance between the L2-normalised states, summed over pairs and averaged over the batch.
    Each state is (B, H); the teacher's are detached."""
    if len(student_states) != len(teacher_states):
        raise ValueError(f"{len(student_states)} student states but {len(teacher_states)} teacher states")
    if not student_states:
        raise ValueError("the patient loss needs at least one pair of layers (a student of 2+ layers)")
    total = 0.0
    for s, t in zip(student_states, teacher_states):
        diff = F.normalize(s, dim=-1) - F.normalize(t.detach(), dim=-1)  # (B, H)
        total = total + diff.pow(2).sum(-1).mean()
    return total


def pkd_skip_pairs(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """PKD-Skip's (student layer, teacher layer) pairs, 0-based: student layer j (1-based, j < k) learns
    from teacher layer j * L / k, i.e. teacher layers 2, 4, ... for half the depth (the paper's
    {2, 4, 6, 8, 10} for 12 -> 6; here 6 -> 3: student 1, 2 from teacher 2, 4). The last layer is left
    to the KD loss on the predictions, as in the paper."""
    if teacher_layers % student_layers:
        raise ValueError(f"PKD-Skip needs the teacher's depth ({teacher_layers}) to be a multiple of the "
                         f"student's ({student_layers})")
    ratio = teacher_layers // student_layers
    return [(j - 1, j * ratio - 1) for j in range(1, student_layers)]


def layer_states(model: MultiExitBert, batch: dict, state: str = "cls") -> list[torch.Tensor]:
    """Every layer's (B, H) state for the patient loss: the [CLS] vector (``cls``, BERT-PKD) or what
    the exits read (``pooled``: the model's own pooling)."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}; choose one of: {', '.join(STATES)}")
    states = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    if state == "cls":
        return [h[:, 0] for h in states]
    return [model.pool(h, batch["attention_mask"]) for h in states]


def cosine_hidden_loss(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """DistilBERT's L_cos: 1 - cos between the student's and the teacher's last hidden states, token
    by token over the real tokens: (B, T, H), (B, T, H), (B, T) -> ()."""
    keep = attention_mask.bool()
    cos = F.cosine_similarity(student[keep], teacher.detach()[keep], dim=-1)  # (N,)
    return (1 - cos).mean()


# ------------------------------------------------------------------------------ BERT-of-Theseus
def theseus_modules(predecessor_layers: int, successor_layers: int) -> list[range]:
    """The predecessor layers each successor layer replaces: consecutive modules of equal size."""
    if predecessor_layers % successor_layers:
        raise ValueError(f"Theseus needs the predecessor's depth ({predecessor_layers}) to be a multiple of the "
                         f"successor's ({successor_layers})")
    size = predecessor_layers // successor_layers
    return [range(i * size, (i + 1) * size) for i in range(successor_layers)]


def theseus_logits(successor: MultiExitBert, predecessor: MultiExitBert, batch: dict,
                   replace: torch.Tensor) -> torch.Tensor:
    """The last exit's logits (B, C) of the mixed model: the successor's embeddings and classifier,
    and for module i the successor's layer i where ``replace[i]`` is true, else the predecessor's
    module of layers (Xu et al. 2020, Sec. 3.1). One draw per module for the whole batch, as the
    authors' code does."""
    modules = theseus_modules(predecessor.num_layers, successor.num_layers)
    if replace.shape != (len(modules),):
        raise ValueError(f"replace needs one flag per successor layer ({len(modules)}), got shape {tuple(replace.shape)}")
    hidden, inputs = successor.begin(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    for i, module in enumerate(modules):
        if replace[i]:
            hidden = successor.run_layer(i, hidden, inputs)
        else:
            for j in module:
                hidden = predecessor.run_layer(j, hidden, inputs)
    return successor.exit_logits(successor.num_layers - 1, hidden, inputs)


# ------------------------------------------------------------------------------ LayerDrop
def layerdrop_keep(num_layers: int, rate: float, training: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Which layers run in this step: each whole layer dropped with probability ``rate`` (Fan et al.
    2019, Sec. 3), independently, once for the batch; none dropped outside training. (L,) bool."""
    if not 0 <= rate < 1:
        raise ValueError(f"LayerDrop rate must be in [0, 1), got {rate}")
    if not training or rate == 0:
        return torch.ones(num_layers, dtype=torch.bool)
    return torch.rand(num_layers, generator=generator) >= rate


def layerdrop_logits(model: MultiExitBert, batch: dict, keep: torch.Tensor) -> torch.Tensor:
    """The last exit's logits (B, C) with the layers where ``keep`` is false skipped (identity)."""
    if keep.shape != (model.num_layers,):
        raise ValueError(f"keep needs one flag per layer ({model.num_layers}), got shape {tuple(keep.shape)}")
    hidden, inputs = model.begin(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    for i in range(model.num_layers):
        if keep[i]:
            hidden = model.run_layer(i, hidden, inputs)
    return model.exit_logits(model.num_layers - 1, hidden, inputs)
