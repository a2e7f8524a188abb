"""Make the fine-tuned classifier a user would bring to `metabert retrofit`: all-MiniLM-L6-v2 fine-tuned
as a plain `BertForSequenceClassification` on SST-2 with a plain PyTorch loop (no metabert training
code), saved with `save_pretrained`, its classes named as hub classifiers name them.

    python benchmarks/finetune_classifier.py OUTPUT [--max-train-samples 16000] [--epochs 1]

The training sentences are the ones `metabert train --task sst2 --max-train-samples N` trains on (the
same held-out calibration slice left out, the same seeded subset), so metabert's own `joint` and
`two-stage` runs on the same N compare with it. Writes OUTPUT/finetune.json: dev accuracy, wall
time, examples, hardware, date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from metabert import hardware, load_glue
from metabert.data.tasks import calibration_count, split_off, subsample
from metabert.model.backbones import minilm_path

LABELS = {0: "negative", 1: "positive"}  # SST-2's classes 0 and 1, named as hub classifiers name them


def batches(texts, labels, tokenizer, size, shuffle, seed=0):
    order = list(range(len(texts)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        enc = tokenizer([texts[i] for i in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
        yield enc, torch.tensor([labels[i] for i in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output")
    p.add_argument("--max-train-samples", type=int, default=16000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    full = load_glue("sst2", "train")
    rest, _, _ = split_off(full, calibration_count(len(full)), args.seed)
    train = subsample(rest, args.max_train_samples, args.seed)
    dev = load_glue("sst2", "dev")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    texts, labels = [e.text for e in train.examples], [e.label for e in train.examples]
    steps = args.epochs * -(-len(texts) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        for enc, y in batches(texts, labels, tokenizer, args.batch_size, True, args.seed + epoch):
            loss = model(**enc, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.inference_mode():
        for enc, y in batches([e.text for e in dev.examples], [e.label for e in dev.examples], tokenizer, 64, False):
            correct += int((model(**enc).logits.argmax(-1) == y).sum())
    out = Path(args.output)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"dev_accuracy": 100 * correct / len(dev), "train_examples": len(texts), "epochs": args.epochs,
              "learning_rate": args.learning_rate, "train_seconds": seconds, "hardware": hardware(),
              "date": dt.date.today().isoformat(),
              "command": f"python benchmarks/finetune_classifier.py OUTPUT --max-train-samples {args.max_train_samples} "
                         f"--epochs {args.epochs}"}
    (out / "finetune.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
