"""Training mechanisms of two dynamic rows of MetaBERT's Table I (docs/METHODS_TABLE1.md has the
readings):

- **Shallow-Deep Networks** (Kaya et al. 2019, ICML): the internal classifiers' losses weighted by
  τ_i, which grow linearly over the epochs from 0.01 to C_i, the relative depth of exit i; the last
  exit's weight is 1 (``sdn_weights``). Samples leave at the first exit whose top softmax
  probability passes γ: the ``max-prob`` policy of ``metabert.engine.policies``.
- **GAML-BERT** (Zhu et al. 2021, EMNLP): mutual knowledge distillation, every exit learning from
  every other exit's predictions (``mutual_kd_loss``), and gradient alignment (GA) of the
  distillation gradient with the cross-entropy gradient: where the two conflict (negative inner
  product), the part of the distillation gradient along the cross-entropy gradient is projected out
  (``align``), so the distillation step never opposes the labels to first order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metabert.data.batching import model_inputs
from metabert.model.multi_exit import MultiExitBert, exit_losses

SDN_START = 0.01  # τ_i at the start of training (Kaya et al., Sec. 4.1; their code's 0.01)


def sdn_weights(num_exits: int, epoch: int, epochs: int, start: float = SDN_START) -> torch.Tensor:
    """Shallow-Deep's loss weights for ``epoch`` (0-based) of ``epochs``: (L,) with
    τ_i = min(C_i, start + (epoch + 1) C_i / epochs) for the internal exits i = 1..L-1, C_i = i / L
    (the exit's relative position; the paper's ICs sit at 15%, 30%, ... 90% of the depth with
    C_i = 0.15, 0.3, ...), and 1 for the last exit."""
    if num_exits < 1 or epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"need num_exits >= 1 and 0 <= epoch < epochs, got {num_exits}, {epoch}, {epochs}")
    position = torch.arange(1, num_exits, dtype=torch.float32) / num_exits  # C_i
    inner = torch.minimum(position, start + (epoch + 1) * position / epochs)
    return torch.cat([inner, torch.ones(1)])


def sdn_loss(logits: torch.Tensor, labels: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
    """Σ_i τ_i CE_i over the exits, (L, B, C), (B,) -> () (Kaya et al.'s weighted SDN objective)."""
    weights = sdn_weights(len(logits), epoch, epochs).to(logits.dtype)
    return (weights * exit_losses(logits, labels)).sum()


def mutual_kd_loss(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """GAML-BERT's mutual learning: each exit i learns the softened predictions of every other exit j
    (held fixed, as in deep mutual learning): Σ_i mean_{j≠i} T² KL(p_j^T || p_i^T), (L, B, C) -> ()."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_exits = len(logits)
    if num_exits < 2:
        raise ValueError("mutual distillation needs at least two exits")
    logp = (logits / temperature).log_softmax(-1)  # (L, B, C)
    targets = logp.detach()
    total = 0.0
    for i in range(num_exits):
        for j in range(num_exits):
            if i != j:
                total = total + F.kl_div(logp[i], targets[j], log_target=True, reduction="batchmean")
    return total * temperature ** 2 / (num_exits - 1)


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def align(kd: list[torch.Tensor], ce: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """Gradient alignment: the distillation gradient with any component against the cross-entropy
    gradient removed, g_kd - (g_kd·g_ce / |g_ce|²) g_ce where g_kd·g_ce < 0, else g_kd unchanged
    (over all parameters as one vector). Returns (aligned gradient, cosine before alignment)."""
    if len(kd) != len(ce):
        raise ValueError(f"{len(kd)} distillation gradients but {len(ce)} cross-entropy gradients")
    dot, norm_ce, norm_kd = _dot(kd, ce), _dot(ce, ce), _dot(kd, kd)
    cosine = float(dot / (norm_ce.sqrt() * norm_kd.sqrt())) if norm_ce > 0 and norm_kd > 0 else 0.0
    if dot >= 0 or norm_ce == 0:
        return list(kd), cosine
    scale = dot / norm_ce
    return [g - (scale * c.double()).to(g.dtype) for g, c in zip(kd, ce)], cosine


@dataclass(frozen=True)
class GamlGradients:
    """One batch's gradients (per trainable parameter, in ``model.named_parameters()`` order)."""

    names: list[str]
    ce: list[torch.Tensor]
    kd: list[torch.Tensor]
    ce_loss: float
    kd_loss: float


def gaml_gradients(model: MultiExitBert, batch: dict, temperature: float = 1.0, weight: float = 1.0) -> GamlGradients:
    """The gradients of the summed exit cross-entropies and of the mutual distillation loss, from one
    forward pass, each multiplied by ``weight`` (a process's share of the batch under
    ``metabert.training.distributed.shard``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    logits = model(**model_inputs(batch))  # (L, B, C)
    ce = exit_losses(logits, batch["labels"]).sum()
    kd = mutual_kd_loss(logits, temperature)
    g_ce = torch.autograd.grad(ce * weight, params, retain_graph=True, allow_unused=True)
    g_kd = torch.autograd.grad(kd * weight, params, allow_unused=True)
    zero = [torch.zeros_like(p) for p in params]
    return GamlGradients([n for n, _ in named], [g if g is not None else z for g, z in zip(g_ce, zero)],
                         [g if g is not None else z for g, z in zip(g_kd, zero)], float(ce.detach()), float(kd.detach()))


def combine(ce: list[torch.Tensor], kd: list[torch.Tensor], kd_weight: float = 1.0,
            aligned: bool = True) -> tuple[list[torch.Tensor], float]:
    """The step's gradient g_ce + λ g_kd, with g_kd aligned first (``aligned``) or as it is (the
    ablation without GA). Returns (gradient, cosine of g_kd and g_ce before alignment)."""
    kd_used, cosine = align(kd, ce)
    if not aligned:
        kd_used = list(kd)
    return [c + kd_weight * k for c, k in zip(ce, kd_used)], cosine
