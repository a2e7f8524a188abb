"""Exit decisions: prediction entropy and the rules built on it."""

from __future__ import annotations

import torch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last dimension.

    Computed from log-softmax as -sum p log p, which stays finite for very large logits (DeeBERT's
    form, log(sum e^x) - sum(x e^x)/sum(e^x), overflows). Computed in float32 at least.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def exit_layers_from_logits(all_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which exit each sample would take, from every exit's logits (L, N, C) -> (N,) 1-based.

    The same rule as ``MultiExitBert.early_exit``, applied after the fact: lets a threshold sweep
    reuse one full forward pass.
    """
    num_layers = all_logits.shape[0]
    below = entropy(all_logits) < threshold  # (L, N)
    below[-1] = True  # the last exit always answers
    return below.float().argmax(0) + 1  # first True
