"""``metabert retrofit --model DIR_OR_HUB_NAME --texts FILE --output CK``: early exits for a fine-tuned
``*ForSequenceClassification`` you already have, without labels. The original model stays the last
exit, exactly (its own head, its own label names); exits 1..L-1 are distilled from its predictions on
your texts (one text per line, or a TSV/CSV/JSONL column) over a cache of the frozen model's layers;
a held-out part of the texts chooses γ so that early exit agrees with the original on at least
--consistency of inputs with confidence --confidence. Then predict, serve, export, bench as usual."""

from __future__ import annotations

import json

from metabert.commands.common import add_progress_option
from metabert.common.options import add_options, from_args
from metabert.eval.calibrate import ways_out
from metabert.training.retrofit import RetrofitConfig, retrofit

def add_parser(sub, name):
    p = sub.add_parser(name, help="early exits for a fine-tuned classifier you already have, without labels",
                       description=__doc__)
    add_options(p, RetrofitConfig)
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args) -> int:
    fields = from_args(RetrofitConfig, args)
    for required in ("model", "texts", "output"):
        if not fields.get(required):
            raise ValueError(f"--{required} is required")
    config = RetrofitConfig(**fields)
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
