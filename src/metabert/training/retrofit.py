"""Retrofit: early exits for a fine-tuned ``*ForSequenceClassification`` a user already has, without labels.

The original model stays exactly what it is: its encoder is frozen and its own classification head
is the last exit (``metabert.model.heads``), so the full model's answers cannot move. Exits 1..L-1
are new heads trained on the frozen model's layers, distilled from the original model's own
predictions on the user's texts (FastBERT's self-distillation, here without any label; a label
column adds a cross-entropy term where the user has labels):

1. one forward pass over the texts that train the heads, caching each inner layer's pooled feature
   (fp16) and the original model's logits; past ``max_cache_mb`` the cache is a memory-mapped file on
   disk, read back in chunks;
2. the small heads trained over the cache (no encoder in the loop: seconds to a minute);
3. a held-out part of the texts (never trained on) chooses γ so that early exit agrees with the
   original model on at least ``consistency`` of inputs with confidence ``confidence`` (the risk-
   controlled calibration of ``metabert.eval.risk``), stored in the checkpoint like every policy;
   ``metabert export --quantize int8`` calibrates the INT8 runner on the same texts against the
   original fp32 model's answers.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from metabert.common.options import option
from metabert.data import DEFAULT_MAX_LENGTH
from metabert.data import tasks as data_mod
from metabert.data.batching import Encoded, eval_batches, iterate, model_inputs, tokenize
from metabert.data.files import DataError, file_format, read_table
from metabert.eval import risk
from metabert.eval.calibrate import calibrate_checkpoint
from metabert.model import HEADS, POOLINGS
from metabert.model.multi_exit import MultiExitBert

log = logging.getLogger(__name__)

RECORD_NAME = "retrofit.json"


@dataclass(frozen=True)
class RetrofitConfig:
    """Options of ``metabert retrofit``, each documented once here (``metabert.common.options`` turns
    the fields into the command's options)."""

    model: str = option(help="the fine-tuned sequence classifier: a local folder (save_pretrained) or a hub "
                             "name")
    texts: str = option(help="your texts: a .txt file (one per line) or a TSV/CSV/JSONL file")
    output: str = option(help="the checkpoint folder to write")
    text_columns: tuple[str, ...] = option(
        (), help="one or two text columns (default: text, sentence, or sentence1+sentence2, by name)")
    label_column: str | None = option(
        None, help="a label column, where you have labels: adds a cross-entropy term (never read otherwise)")
    format: str | None = option(None, help="the texts' format (default: from the extension)",
                                choices=("tsv", "csv", "jsonl", "txt"))
    consistency: float = option(0.99, help="promised agreement with the original model (default 0.99)")
    confidence: float = option(0.95, help="confidence of that promise, 1-δ (default 0.95)")
    calibration_fraction: float = option(
        0.2, help="part of the texts held out to choose γ, never trained on (default 0.2)")
    pooling: str = option("mean", help="how the new exits read their layer (default mean)", choices=POOLINGS)
    exit_head: str = option("linear", help="the new exits: linear (default), or pooler (dense + tanh + linear)",
                            choices=HEADS)
    epochs: int = option(20, help="passes of head training over the cached features (default 20)")
    learning_rate: float = option(2e-3, help="of the exit heads (default 2e-3)")
    batch_size: int = option(256, help="head training batch (default 256)")
    temperature: float = option(1.0, help="of the distillation (default 1)")
    label_weight: float = option(
        0.5, help="weight of the labels' cross-entropy with --label-column (default 0.5)")
    max_seq_length: int = option(DEFAULT_MAX_LENGTH, help="tokens per text (default 128)")
    forward_batch_size: int = option(64, help="texts per forward pass of the model (default 64)")
    max_cache_mb: float = option(
        2048.0, help="above this the feature cache is a memory-mapped file on disk (default 2048)")
    max_texts: int | None = option(None, help="the first N texts only")
    seed: int = option(0, help="the held-out split and the new heads' initialisation (default 0)")

    def __post_init__(self):
        checks = {"consistency": 0 < self.consistency < 1, "confidence": 0 < self.confidence < 1,
                  "calibration_fraction": 0 < self.calibration_fraction < 1, "pooling": self.pooling in POOLINGS,
                  "exit_head": self.exit_head in HEADS, "epochs": self.epochs >= 1, "learning_rate": self.learning_rate > 0,
                  "batch_size": self.batch_size >= 1, "temperature": self.temperature > 0,
                  "label_weight": self.label_weight >= 0, "max_seq_length": self.max_seq_length >= 8,
                  "forward_batch_size": self.forward_batch_size >= 1, "max_cache_mb": self.max_cache_mb >= 0,
                  "max_texts": self.max_texts is None or self.max_texts >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")


@dataclass
class Texts:
    """The user's texts as read: texts, pairs (or None), labels (class indices, or None) and how the
    file was read (stored in the checkpoint so that calibration can read the held-out part again)."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[int] | None
    source: str
    format: str
    columns: list
    header: bool


def read_texts(config: RetrofitConfig, label_names: tuple[str, ...]) -> Texts:
    """The texts (and labels, only where ``label_column`` asks for them) of ``config.texts``."""
    path = Path(config.texts)
    fmt = file_format(path, config.format)
    columns, header = data_mod.text_columns_for(None, path, fmt, config.text_columns)
    wanted = list(columns) + ([config.label_column] if config.label_column else [])
    roles = ("text",) * len(columns) + (("label",) if config.label_column else ())
    if fmt == "txt" and config.label_column:
        raise DataError(f"{path}: a text file holds no label column; give a TSV, CSV or JSONL file")
    index = data_mod.label_index(label_names)
    texts, pairs, labels = [], [], []
    for row in read_table(path, fmt, wanted, header=header, roles=roles):
        values = row.values
        for column, value in zip(columns, values):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}:{row.line}: empty or missing text in {column!r}")
        texts.append(values[0])
        pairs.append(values[1] if len(columns) == 2 else None)
        if config.label_column:
            label = str(values[-1]).strip()
            if label not in index:
                raise DataError(f"{path}:{row.line}: unknown label {label!r} (the classifier's classes are "
                                f"{list(label_names)}, or their indices)")
            labels.append(index[label])
        if config.max_texts and len(texts) >= config.max_texts:
            break
    if not texts:
        raise DataError(f"{path}: no texts")
    return Texts(texts, pairs if len(columns) == 2 else None, labels if config.label_column else None, str(path),
                 fmt, list(columns), header)


def calibration_rows(rows: int, config: RetrofitConfig) -> int:
    """How many of ``rows`` texts are held out to choose γ; an error, saying how many texts the
    promise needs, where that is too few to certify it even with no disagreement at all."""
    held = data_mod.calibration_count(rows, config.calibration_fraction)
    need = risk.min_examples(1 - config.consistency, 1 - config.confidence)
    if held < need:
        raise DataError(
            f"{config.texts}: {rows} texts hold out {held} for calibration, but agreement ≥ {config.consistency:g} "
            f"with confidence {config.confidence:g} needs at least {need} held-out texts even with no "
            f"disagreement at all (several times that to certify a real speed-up): give at least "
            f"{math.ceil(need / config.calibration_fraction)} texts (better {math.ceil(5 * need / config.calibration_fraction)}), "
            f"a larger --calibration-fraction, or a lower --consistency / --confidence")
    if held >= rows:
        raise DataError(f"{config.texts}: no texts left to train the exits on")
    return held


class FeatureCache:
    """Each inner layer's pooled feature (N, L-1, H) in fp16, in memory or, past ``max_mb``, in a
    memory-mapped file on disk; the original model's logits (N, C) in fp32."""

    def __init__(self, rows: int, layers: int, hidden: int, classes: int, max_mb: float):
        self.nbytes = rows * layers * hidden * 2
        self.on_disk = self.nbytes > max_mb * 2**20
        if self.on_disk:
            self._dir = tempfile.TemporaryDirectory(prefix="metabert-retrofit-")
            self.features = np.lib.format.open_memmap(Path(self._dir.name) / "features.npy", mode="w+",
                                                      dtype=np.float16, shape=(rows, layers, hidden))
        else:
            self.features = np.empty((rows, layers, hidden), dtype=np.float16)
        self.teacher = np.empty((rows, classes), dtype=np.float32)

    CHUNK_BYTES = 64 * 2**20  # rows read together from the cache

    def chunk_rows(self, size: int) -> int:
        return max(size, self.CHUNK_BYTES // max(1, self.features[0].nbytes))

    def batches_per_epoch(self, rows: int, size: int) -> int:
        chunk = self.chunk_rows(size)
        return sum(-(-min(chunk, rows - start) // size) for start in range(0, rows, chunk))

    def chunks(self, rows: int, size: int, rng: np.random.Generator):
        """Minibatch row indices for one epoch: shuffled within chunks of contiguous rows (so a
        disk cache is read in order, a chunk at a time; in memory the same order), chunks in
        random order."""
        chunk = self.chunk_rows(size)
        for start in rng.permutation(range(0, rows, chunk)):
            order = start + rng.permutation(min(chunk, rows - start))
            for i in range(0, len(order), size):
                yield np.sort(order[i:i + size])


@torch.inference_mode()
def fill_cache(model: MultiExitBert, data: Encoded, cache: FeatureCache, batch_size: int, progress: bool) -> None:
    """One forward pass: every inner layer's pooled feature as its exit reads it, and the last exit's
    logits (the original classifier's own), for every text in ``data``."""
    model.eval()
    batches = eval_batches(data, batch_size)
    bar = tqdm(iterate(data, batches, model.tokenizer.pad_token_id), total=len(batches), desc="retrofit: features",
               unit="batch", disable=not progress)
    last = model.num_layers - 1
    for batch in bar:
        inputs = model_inputs(batch)
        hidden, layer_inputs = model.begin(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
        rows = batch["index"].numpy()
        pooled = []
        for i in range(model.num_layers):
            hidden = model.run_layer(i, hidden, layer_inputs)
            if i < last:
                pooled.append(model.exit_features(hidden, layer_inputs))
        cache.features[rows] = torch.stack(pooled, 1).to(torch.float16).numpy()  # (B, L-1, H)
        cache.teacher[rows] = model.exit_logits(last, hidden, layer_inputs, train=False).float().numpy()


def train_heads(model: MultiExitBert, cache: FeatureCache, rows: int, labels: list[int] | None,
                config: RetrofitConfig, progress: bool) -> list[float]:
    """Exits 1..L-1 trained over the cache: KL to the original model's softened predictions (T²
    scaled), plus ``label_weight`` x cross-entropy where labels are given. Returns each epoch's
    mean loss."""
    heads = torch.nn.ModuleList(list(model.exits)[:-1]).train()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.learning_rate, weight_decay=0.01)
    steps = config.epochs * cache.batches_per_epoch(rows, config.batch_size)
    warm = max(1, steps // 10)  # linear warm-up over a tenth of the steps, then linear decay
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warm) * max(0.0, 1.0 - step / steps))
    rng = np.random.default_rng(config.seed)
    label_tensor = torch.tensor(labels) if labels is not None else None
    t = config.temperature
    history = []
    bar = tqdm(range(config.epochs), desc="retrofit: exit heads", unit="epoch", disable=not progress)
    for _ in bar:
        total, seen = 0.0, 0
        for index in cache.chunks(rows, config.batch_size, rng):
            features = torch.from_numpy(np.asarray(cache.features[index])).float()  # (B, L-1, H)
            target = torch.from_numpy(cache.teacher[index] / t).log_softmax(-1)  # (B, C)
            loss = 0.0
            for i, head in enumerate(heads):
                logits = head(features[:, i])
                loss = loss + F.kl_div((logits / t).log_softmax(-1), target, log_target=True,
                                       reduction="batchmean") * t * t
                if label_tensor is not None:
                    loss = loss + config.label_weight * F.cross_entropy(logits, label_tensor[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        history.append(total / seen)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    heads.eval()
    return history


def retrofit(config: RetrofitConfig, progress: bool = True) -> dict:
    """Turn ``config.model`` into a metabert checkpoint at ``config.output`` (see the module
    docstring); returns what was done, with timings and the calibration record."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = MultiExitBert.from_classifier(config.model, pooling=config.pooling, head=config.exit_head, seed=config.seed)
    names = tuple(model.config.label_names)
    texts = read_texts(config, names)
    rows = len(texts.texts)
    held = calibration_rows(rows, config)
    held_set = set(data_mod.held_out(rows, held, config.seed))
    train = [i for i in range(rows) if i not in held_set]

    def pick(values):
        return [values[i] for i in train]

    encoded = tokenize(model.tokenizer, pick(texts.texts), pick(texts.pairs) if texts.pairs else None,
                       config.max_seq_length).encoded
    labels = pick(texts.labels) if texts.labels is not None else None
    hidden = model.encoder.config.hidden_size
    cache = FeatureCache(len(train), model.num_layers - 1, hidden, len(names), config.max_cache_mb)
    log.info("retrofit: %d texts (%d to train the exits, %d held out), feature cache %.1f MiB %s", rows, len(train),
             held, cache.nbytes / 2**20, "on disk" if cache.on_disk else "in memory")
    t0 = time.perf_counter()
    fill_cache(model, encoded, cache, config.forward_batch_size, progress)
    cache_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    history = train_heads(model, cache, len(train), labels, config, progress)
    head_seconds = time.perf_counter() - t0
    spec = data_mod.TaskSpec("custom", "", tuple(str(c) for c in texts.columns) if texts.format != "txt" else ("text",),
                             config.label_column or "label", labels=names,
                             format=texts.format if texts.format != "txt" else "jsonl")
    model.with_config(task=data_mod.spec_to_dict(spec), calibration={
        "kind": "texts", "source": texts.source, "format": texts.format, "columns": texts.columns,
        "header": texts.header, "rows": rows, "count": held, "seed": config.seed, "fraction": held / rows})
    record = {"config": asdict(config), "texts": rows, "trained_on": len(train), "held_out": held,
              "labels_used": texts.labels is not None, "cache_mib": cache.nbytes / 2**20, "cache_on_disk": cache.on_disk,
              "cache_seconds": cache_seconds, "head_seconds": head_seconds, "head_loss_per_epoch": history}
    model.save_pretrained(config.output, {RECORD_NAME: json.dumps(record, indent=2)})
    t0 = time.perf_counter()
    calibration = calibrate_checkpoint(config.output, delta=round(1 - config.confidence, 12),
                                       batch_size=config.forward_batch_size, max_length=config.max_seq_length,
                                       consistency=config.consistency, model=model)
    record.update(calibration_seconds=time.perf_counter() - t0, seconds=time.perf_counter() - started,
                  calibration=calibration)
    (Path(config.output) / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return record
