"""Tokenisation and length-bucketed batches with dynamic padding.

Every batch is padded only to its own longest example; for training, examples are grouped into
batches of similar length (sorted inside shuffled pools of ``pool`` batches) and the batches are
shuffled, so the order stays random while little time goes on padding.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch

from metabert.data.tasks import Dataset


@dataclass
class Encoded:
    """A tokenised dataset: one list of token ids (and token type ids) per example."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class Tokenized(NamedTuple):
    encoded: Encoded
    truncated: list[bool] | None  # per item, where asked for (``flag_truncated``)
    replaced: list[int]  # per item: lone UTF-16 surrogates replaced by U+FFFD


# JSON may carry lone surrogates ("\ud800"); UTF-8, and so the tokenizer, cannot hold them
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(texts: list[str]) -> tuple[list[str], list[int]]:
    cleaned = [_SURROGATE.subn("\ufffd", t) for t in texts]
    return [t for t, _ in cleaned], [n for _, n in cleaned]


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
             labels: list[int] | None = None, flag_truncated: bool = False) -> Tokenized:
    """The one tokenisation of the project: texts (and their pairs, all or none) to unpadded ids,
    cut to ``max_length`` tokens, lone surrogates replaced (and counted). ``flag_truncated``: also
    say which items were cut (costs a second pass where any was). ``labels`` default to 0."""
    if pairs is not None and any(p is None for p in pairs):
        raise ValueError("give a second text for every item or for none")
    texts, replaced = _without_surrogates(texts)
    if pairs is not None:
        pairs, in_pairs = _without_surrogates(pairs)
        replaced = [a + b for a, b in zip(replaced, in_pairs)]
    truncated = None
    if flag_truncated:
        enc = tokenizer(texts, pairs, truncation=False, padding=False)
        truncated = [len(ids) > max_length for ids in enc["input_ids"]]
    if not flag_truncated or any(truncated):
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    types = enc.get("token_type_ids")
    encoded = Encoded(list(enc["input_ids"]), list(types) if types is not None else None,
                      list(labels) if labels is not None else [0] * len(texts))
    return Tokenized(encoded, truncated, replaced)


def encode(dataset: Dataset, tokenizer, max_length: int) -> Encoded:
    pairs = [ex.text_pair for ex in dataset.examples]
    return tokenize(tokenizer, [ex.text for ex in dataset.examples], None if any(p is None for p in pairs) else pairs,
                    max_length, [ex.label for ex in dataset.examples]).encoded


def pad_all(data: Encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """Every item of ``data`` in one batch, padded to the longest: the model's inputs."""
    return model_inputs(collate(data, list(range(len(data))), pad_id))


def collate(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to their longest one."""
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if data.token_type_ids else None
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([data.labels[i] for i in indices])}
    if types is not None:
        batch["token_type_ids"] = types
    batch["index"] = torch.tensor(indices)
    return batch


def train_batches(data: Encoded, batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """Index lists for one epoch: shuffled, bucketed by length inside pools, batches shuffled."""
    order = list(range(len(data)))
    rng.shuffle(order)
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(data.input_ids[i]))
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def eval_batches(data: Encoded, batch_size: int) -> list[list[int]]:
    """Index lists sorted by length (results are put back in file order by the caller)."""
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]


def iterate(data: Encoded, batches: list[list[int]], pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    for indices in batches:
        yield collate(data, indices, pad_id)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
