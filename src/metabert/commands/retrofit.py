"""``metabert retrofit --model DIR_OR_HUB_NAME --texts FILE --output CK``: early exits for a fine-tuned
``*ForSequenceClassification`` you already have, without labels. The original model stays the last
exit, exactly (its own head, its own label names); exits 1..L-1 are distilled from its predictions on
your texts (one text per line, or a TSV/CSV/JSONL column) over a cache of the frozen model's layers;
a held-out part of the texts chooses γ so that early exit agrees with the original on at least
--consistency of inputs with confidence --confidence. Then predict, serve, export, bench as usual."""

from __future__ import annotations

import dataclasses
import json

from metabert.commands.common import add_progress_option
from metabert.common.options import comma_list
from metabert.eval.calibrate import ways_out
from metabert.training.retrofit import RetrofitConfig, retrofit

HELP = {
    "model": "the fine-tuned sequence classifier: a local folder (save_pretrained) or a hub name",
    "texts": "your texts: a .txt file (one per line) or a TSV/CSV/JSONL file",
    "output": "the checkpoint folder to write",
    "text_columns": "one or two text columns (default: text, sentence, or sentence1+sentence2, by name)",
    "label_column": "a label column, where you have labels: adds a cross-entropy term (never read otherwise)",
    "format": "tsv, csv, jsonl or txt (default: from the extension)",
    "consistency": "promised agreement with the original model (default 0.99)",
    "confidence": "confidence of that promise, 1-δ (default 0.95)",
    "calibration_fraction": "part of the texts held out to choose γ, never trained on (default 0.2)",
    "pooling": "how the new exits read their layer: mean (default) or cls",
    "exit_head": "the new exits: linear (default) or pooler (dense + tanh + linear)",
    "epochs": "passes of head training over the cached features (default 20)",
    "learning_rate": "of the exit heads (default 2e-3)",
    "batch_size": "head training batch (default 256)",
    "temperature": "of the distillation (default 1)",
    "label_weight": "weight of the labels' cross-entropy with --label-column (default 0.5)",
    "max_seq_length": "tokens per text (default 128)",
    "forward_batch_size": "texts per forward pass of the model (default 64)",
    "max_cache_mb": "above this the feature cache is a memory-mapped file on disk (default 2048)",
    "max_texts": "the first N texts only",
    "seed": "the held-out split and the new heads' initialisation (default 0)",
}


def add_parser(sub, name):
    p = sub.add_parser(name, help="early exits for a fine-tuned classifier you already have, without labels",
                       description=__doc__)
    for field in dataclasses.fields(RetrofitConfig):
        flag = "--" + field.name.replace("_", "-")
        kwargs = {"help": HELP[field.name], "dest": field.name}
        if field.default is dataclasses.MISSING:
            kwargs["required"] = True
        elif field.name == "text_columns":
            kwargs.update(type=comma_list, default=())
        else:
            kind = {"int | None": int, "str | None": str}.get(str(field.type), None)
            kwargs.update(default=field.default, type=kind or type(field.default) if field.default is not None else str)
        if field.name == "format":
            kwargs["choices"] = ("tsv", "csv", "jsonl", "txt")
        p.add_argument(flag, **kwargs)
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args) -> int:
    config = RetrofitConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RetrofitConfig)})
    record = retrofit(config, progress=args.progress)
    calibration = record["calibration"]
    print(f"retrofitted {config.model}: {record['texts']} texts, {record['trained_on']} trained the exits "
          f"({'with' if record['labels_used'] else 'without'} labels), {record['held_out']} held out; "
          f"feature cache {record['cache_mib']:.0f} MiB {'on disk' if record['cache_on_disk'] else 'in memory'}")
    print(f"time: features {record['cache_seconds']:.0f}s, exit heads {record['head_seconds']:.0f}s, calibration "
          f"{record['calibration_seconds']:.0f}s, {record['seconds']:.0f}s in all")
    promise = calibration["promise"]
    print(f"calibrated on {calibration['chosen_on']}: {calibration['name']} γ={calibration['threshold']:g} for "
          f"{calibration['goal']}, layer speed-up {calibration['calibration_layer_speedup']:.2f}x")
    if not promise["certified"]:
        print(ways_out(promise, config.output))
    print(f"checkpoint: {config.output} (predict, serve, export --quantize int8 and bench use it as it is)")
    print(json.dumps({"output": config.output, "seconds": round(record["seconds"], 1)}))
    return 0
