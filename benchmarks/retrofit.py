"""docs/RETROFIT.md: `metabert retrofit` on a real fine-tuned classifier, measured.

    GLUE_DIR=... python benchmarks/retrofit.py --classifier runs/retrofit/sst2-classifier \
        [--work runs/retrofit] [--results results/retrofit] [--page docs/RETROFIT.md]

The classifier is all-MiniLM-L6-v2 fine-tuned as a plain `BertForSequenceClassification` on SST-2
(`benchmarks/finetune_classifier.py`). Each stage keeps its output in --work and is skipped when
it is there (delete a folder to run its stage again):

1. retrofit with SST-2's training sentences as unlabelled texts (`--text-columns sentence`: the label
   column is never read), and variants: larger exit heads (`--exit-head pooler`), fewer texts;
2. SST-2 dev: each exit's agreement with the original and accuracy; at the calibrated γ;
3. the promise checked on resampled splits of the held-out texts (eager, and INT8 against fp32);
4. `metabert export --quantize int8` (the INT8 runner calibrated against the original fp32 answers);
5. batch-1 latency on SST-2 dev: the original run the plain way (eager transformers; ORT INT8 of
   its plain export) against the retrofitted model's early exit (eager; ORT INT8), interleaved;
6. metabert's own `joint` and `two-stage` on the classifier's 16,000 training sentences: dev accuracy
   against layer speed-up, beside the retrofitted model's: what keeping the original model costs.
Writes results/retrofit/retrofit.json, the page and its plots. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from metabert import EagerRunner, MultiExitBert, all_exit_logits, encode, hardware, load_glue, pyplot, read_log, simulate
from metabert.bench.timing import Variant, batch1_latencies
from metabert.cli import main as metabert
from metabert.data.batching import collate, model_inputs
from metabert.data.tasks import glue_file
from metabert.deploy.ort_runner import OrtMultiExit
from metabert.deploy.plain import OrtFullRunner, TransformersRunner, export_classifier, quantize_classifier
from metabert.engine.dataset import runner_logits
from metabert.engine.policies import policy_from_dict, simulate_exits
from metabert.engine.resolve import record_for
from metabert.eval.calibrate import calibration_texts
from metabert.eval.evaluate import candidate_policies
from metabert.eval.validate import validate_consistency

VARIANTS = {  # name -> extra retrofit options
    "linear heads, all 67,349 texts": [],
    "pooler heads, all 67,349 texts": ["--exit-head", "pooler"],
    "linear heads, 20,000 texts": ["--max-texts", "20000"],
    "linear heads, 5,000 texts": ["--max-texts", "5000"],
}
MAIN = "linear heads, all 67,349 texts"
INT8_CONSISTENCY = 0.98  # INT8 of the full model alone agrees with fp32 on 98.7% of the held-out texts


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def labels_of(dataset) -> list[int]:
    return [e.label for e in dataset.examples]


def run(args: list[str]) -> None:
    print("$ metabert " + " ".join(args), flush=True)
    if metabert(args) != 0:
        raise SystemExit(f"metabert {args[0]} failed")


def dev_figures(model: MultiExitBert, dev, logits: torch.Tensor) -> dict:
    """Per exit: agreement with the last exit (the original model) and accuracy; at the calibrated γ."""
    labels = torch.tensor(labels_of(dev))
    original = logits[-1].argmax(-1)
    per_exit = [{"exit": i + 1, "agreement": float((logits[i].argmax(-1) == original).float().mean()),
                 "accuracy": float((logits[i].argmax(-1) == labels).float().mean() * 100)} for i in range(len(logits))]
    record = record_for(model.config.exit_policy, "eager", warn=False)[0]
    policy = policy_from_dict(record)
    result = simulate(logits, labels_of(dev), "accuracy", policy)
    layers = simulate_exits(logits, policy)
    chosen = logits[layers - 1, torch.arange(logits.shape[1])].argmax(-1)
    return {"per_exit": per_exit, "policy": policy.describe(), "threshold": policy.threshold,
            "promise": record["promise"], "calibration_layer_speedup": record["calibration_layer_speedup"],
            "dev_agreement": float((chosen == original).float().mean()), "dev_accuracy": result.score,
            "dev_layer_speedup": result.layer_speedup, "dev_full_accuracy": per_exit[-1]["accuracy"],
            "exit_counts": list(result.exit_counts)}


def curve(logits: torch.Tensor, labels: list[int]) -> list[dict]:
    """Dev accuracy and agreement with the last exit against layer speed-up, entropy thresholds spread
    over the exits' own entropies."""
    original = logits[-1].argmax(-1)
    out = []
    for policy in candidate_policies(logits, "entropy", 2, 40):
        r = simulate(logits, labels, "accuracy", policy)
        layers = simulate_exits(logits, policy)
        chosen = logits[layers - 1, torch.arange(logits.shape[1])].argmax(-1)
        out.append({"threshold": policy.threshold, "layer_speedup": r.layer_speedup, "accuracy": r.score,
                    "agreement": float((chosen == original).float().mean())})
    return sorted(out, key=lambda p: p["layer_speedup"])


def at_speedup(points: list[dict], speedup: float, key: str) -> float:
    """``key`` interpolated at ``speedup`` along a curve sorted by speed-up."""
    xs, ys = [p["layer_speedup"] for p in points], [p[key] for p in points]
    return float(np.interp(speedup, xs, ys))


def latency(ck: Path, int8: Path, classifier: Path, work: Path, dev, repeats: int, threads: int) -> dict:
    """Batch-1 latency (ms, mean over dev) of the original run the plain way and of early exit."""
    torch.set_num_threads(threads)
    model = MultiExitBert.from_pretrained(ck).eval()
    hf = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    plain = work / "plain-onnx"
    if not (plain / "model-int8.onnx").is_file():
        export_classifier(hf, model.tokenizer, plain / "model.onnx")
        quantize_classifier(plain / "model.onnx", plain / "model-int8.onnx")
    enc = encode(dev, model.tokenizer, 128)
    singles = [model_inputs(collate(enc, [i], model.tokenizer.pad_token_id)) for i in range(len(enc))]
    eager, ort = EagerRunner(model), OrtMultiExit(int8, threads=threads)
    policies = {r.name: policy_from_dict(record_for(model.config.exit_policy, r.name, warn=False)[0])
                for r in (eager, ort)}
    groups = [[Variant(TransformersRunner(hf), None), Variant(eager, None), Variant(eager, policies["eager"])],
              [Variant(OrtFullRunner(plain / "model-int8.onnx", "plain-ort-int8", 6, threads), None),
               Variant(ort, None), Variant(ort, policies["ort-int8"])]]
    out = {}
    for group in groups:
        times, outputs = batch1_latencies(group, singles, repeats, warmup=20)
        for v in group:
            ms = np.median(times[v.name], axis=0) * 1e3
            preds = [int(o.predictions[0]) for o in outputs[v.name]]
            layers = [int(o.exit_layer[0]) for o in outputs[v.name]]
            out[v.name] = {"mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
                           "p95_ms": float(np.percentile(ms, 95)),
                           "accuracy": 100 * float(np.mean(np.array(preds) == np.array(labels_of(dev)))),
                           "mean_exit_layer": float(np.mean(layers)), "predictions": preds}
    reference = out["plain-eager_full"]["predictions"]
    for name, r in out.items():
        r["agreement_with_original"] = float(np.mean(np.array(r.pop("predictions")) == np.array(reference)))
    return {"threads": threads, "repeats": repeats, "rows": out,
            "ort_int8_policy": policies["ort-int8"].describe(), "eager_policy": policies["eager"].describe()}


def validation(ck: Path, int8: Path, splits: int) -> dict:
    """The promise on resampled halves of the held-out texts: eager, and INT8 against fp32 answers."""
    model = MultiExitBert.from_pretrained(ck).eval()
    encoded, what = calibration_texts(model)
    pad = model.tokenizer.pad_token_id
    promise = model.config.exit_policy["promise"]
    eager_logits = runner_logits(EagerRunner(model), encoded, pad)
    out = {"pool": what, "consistency": promise["consistency"], "delta": promise["delta"]}
    half = eager_logits.shape[1] // 2
    out["eager"] = validate_consistency(eager_logits, promise["consistency"], half, splits, promise["delta"])
    int8_logits = runner_logits(OrtMultiExit(int8), encoded, pad)
    reference = eager_logits[-1].argmax(-1)
    out["int8_full_agreement"] = float((int8_logits[-1].argmax(-1) == reference).float().mean())
    int8_promise = model.config.exit_policy["runners"]["ort-int8"]["promise"]
    out["int8_consistency"] = int8_promise["consistency"]
    out["ort-int8"] = validate_consistency(int8_logits, int8_promise["consistency"], half, splits, promise["delta"],
                                           reference=reference.numpy())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", required=True)
    p.add_argument("--work", default="runs/retrofit")
    p.add_argument("--results", default="results/retrofit")
    p.add_argument("--page", default="docs/RETROFIT.md")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--splits", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--render-only", action="store_true", help="write the page and plots from --results' JSON")
    args = p.parse_args()
    work, results = Path(args.work), Path(args.results)
    if args.render_only:
        report = json.loads((results / "retrofit.json").read_text())
        page = Path(args.page)
        plots(report, page.parent)
        page.write_text(render(report))
        return 0
    results.mkdir(parents=True, exist_ok=True)
    classifier = Path(args.classifier)
    texts = glue_file("sst2", "train", None)
    dev = load_glue("sst2", "dev")
    report = {"date": dt.date.today().isoformat(), "hardware": hardware(),
              "finetune": json.loads((classifier / "finetune.json").read_text()), "variants": {}}
    # 1-2: retrofit and each variant on dev
    for name, extra in VARIANTS.items():
        ck = work / f"retrofit-{slug(name)}"
        if not (ck / "retrofit.json").is_file():
            run(["retrofit", "--model", str(classifier), "--texts", str(texts), "--text-columns", "sentence",
                 "--output", str(ck), "--no-progress", *extra])
        record = json.loads((ck / "retrofit.json").read_text())
        model = MultiExitBert.from_pretrained(ck).eval()
        logits = all_exit_logits(model, encode(dev, model.tokenizer, 128))
        calibration = record.pop("calibration")
        record.pop("config")
        report["variants"][name] = {"options": extra, "retrofit": record, **dev_figures(model, dev, logits),
                                    "curve": curve(logits, labels_of(dev)),
                                    "calibration_chosen_on": calibration["chosen_on"]}
    main_ck = work / f"retrofit-{slug(MAIN)}"
    # 4: INT8 export, calibrated against the fp32 answers
    int8 = work / "retrofit-int8"
    if not (int8 / "onnx_meta.json").is_file():
        run(["export", "--checkpoint", str(main_ck), "--quantize", "int8", "--output", str(int8), "--no-progress"])
    stored = MultiExitBert.from_pretrained(main_ck).config.exit_policy["runners"]["ort-int8"]
    keys = ("name", "threshold", "goal", "calibration_layer_speedup")
    report["int8_calibration"] = {"at_export": {k: stored[k] for k in keys}}
    if stored["promise"]["consistency"] != INT8_CONSISTENCY:  # INT8 alone moves answers: a promise it can keep
        run(["calibrate", "--checkpoint", str(main_ck), "--onnx", str(int8), "--consistency", str(INT8_CONSISTENCY),
             "--no-progress"])
        stored = MultiExitBert.from_pretrained(main_ck).config.exit_policy["runners"]["ort-int8"]
    report["int8_calibration"]["chosen"] = {k: stored[k] for k in keys}
    # 3: the promise on resampled splits
    report["validation"] = validation(main_ck, int8, args.splits)
    # 6: metabert's own training on the classifier's training sentences
    n = report["finetune"]["train_examples"]
    for method, epochs in (("joint", "1"), ("two-stage", "2")):
        ck = work / f"metabert-{method}"
        if not (ck / "log.jsonl").is_file():
            run(["train", "--task", "sst2", "--model", "minilm-l6", "--method", method, "--epochs", epochs,
                 "--max-train-samples", str(n), "--output", str(ck), "--no-progress"])
        model = MultiExitBert.from_pretrained(ck).eval()
        logits = all_exit_logits(model, encode(dev, model.tokenizer, 128))
        report.setdefault("trained", {})[method] = {
            "epochs": int(epochs), "curve": curve(logits, labels_of(dev)),
            "per_exit_accuracy": [float((logits[i].argmax(-1) == torch.tensor(labels_of(dev))).float().mean() * 100)
                                  for i in range(len(logits))],
            "train_seconds": sum(r["train_seconds"] for r in read_log(ck))}
    # 5: latency
    report["latency"] = latency(main_ck, int8, classifier, work, dev, args.repeats, args.threads)
    report["command"] = ("GLUE_DIR=... python benchmarks/retrofit.py --classifier runs/retrofit/sst2-classifier "
                         f"--repeats {args.repeats} --splits {args.splits} --threads {args.threads}")
    (results / "retrofit.json").write_text(json.dumps(report, indent=2))
    page = Path(args.page)
    plots(report, page.parent)
    page.write_text(render(report))
    print(f"wrote {results / 'retrofit.json'} and {page}")
    return 0


def plots(report: dict, folder: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, v in report["variants"].items():
        exits = [e["exit"] for e in v["per_exit"]]
        left.plot(exits, [e["agreement"] for e in v["per_exit"]], marker="o", label=name)
    left.axhline(0.99, color="grey", linestyle=":", label="0.99")
    left.set(xlabel="exit (layer)", ylabel="agreement with the original on SST-2 dev", title="each exit alone")
    left.legend(fontsize=7)
    main = report["variants"][MAIN]
    right.plot([p["layer_speedup"] for p in main["curve"]], [p["accuracy"] for p in main["curve"]], marker=".",
               label="retrofit (original model kept)")
    right.plot([main["dev_layer_speedup"]], [main["dev_accuracy"]], marker="*", markersize=14, linestyle="none",
               color="C3", label=f"retrofit, calibrated γ ({main['dev_layer_speedup']:.2f}x)")
    for method, t in report["trained"].items():
        right.plot([p["layer_speedup"] for p in t["curve"]], [p["accuracy"] for p in t["curve"]], marker=".",
                   label=f"metabert train --method {method}")
    right.set(xlabel="layer speed-up (L / mean exit layer)", ylabel="SST-2 dev accuracy",
              title="entropy early exit, threshold sweep on dev")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "retrofit_sst2.png", dpi=120)
    plt.close(fig)


def render(report: dict) -> str:
    main, ft, val, lat = report["variants"][MAIN], report["finetune"], report["validation"], report["latency"]
    rec = main["retrofit"]
    lines = ["# Retrofit: early exits for a classifier you already have", "",
             f"Generated by `{report['command']}` on {report['date']} from `results/retrofit/retrofit.json`. "
             "Do not edit by hand.", "", f"Hardware: {report['hardware']}.", "",
             "## The classifier and its retrofit", "",
             f"all-MiniLM-L6-v2 fine-tuned as a plain `BertForSequenceClassification` on {ft['train_examples']:,} "
             f"SST-2 training sentences ({ft['epochs']} epoch, a plain PyTorch loop, `{ft['command']}`): dev accuracy "
             f"{ft['dev_accuracy']:.2f}, {ft['train_seconds']:.0f} s of training.", "",
             f"`metabert retrofit --model CLASSIFIER --texts SST-2/train.tsv --text-columns sentence --output CK`: "
             f"{rec['texts']:,} training sentences as unlabelled texts (the label column is never read), "
             f"{rec['trained_on']:,} train the exit heads, {rec['held_out']:,} held out choose γ. Feature cache "
             f"{rec['cache_mib']:.0f} MiB in memory (fp16, five layers x 384; past `--max-cache-mb`, 2,048 by default, "
             "it is a memory-mapped file read back in chunks).", "",
             "| step | seconds |", "|---|---|",
             f"| fine-tuning the original (for comparison) | {ft['train_seconds']:.0f} |",
             f"| retrofit: one forward pass over the {rec['trained_on']:,} training texts, caching features | {rec['cache_seconds']:.0f} |",
             f"| retrofit: training the five exit heads over the cache | {rec['head_seconds']:.0f} |",
             f"| retrofit: calibration (a forward pass over the {rec['held_out']:,} held-out texts) | {rec['calibration_seconds']:.0f} |",
             f"| retrofit in all | {rec['seconds']:.0f} |", "",
             "## SST-2 dev: agreement with the original, accuracy, speed-up", "",
             f"The promise: {main['promise']['bounded']}, i.e. agreement with the original model ≥ "
             f"{main['promise']['consistency']:g} with confidence {main['promise']['confidence']:g}, certified on "
             f"{main['calibration_chosen_on']}.", "",
             "| exits | calibrated policy | layer speed-up on held-out texts | dev agreement | dev accuracy (original: "
             f"{main['dev_full_accuracy']:.2f}) | dev layer speed-up | dev exits per layer |",
             "|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        lines.append(f"| {name} | {v['policy']} | {v['calibration_layer_speedup']:.2f}x | {v['dev_agreement']:.4f} | "
                     f"{v['dev_accuracy']:.2f} | {v['dev_layer_speedup']:.2f}x | {v['exit_counts']} |")
    goal = main["dev_layer_speedup"] >= 1.8 and main["dev_agreement"] >= 0.99
    lines += ["", f"Goal: ≥ 1.8x at agreement ≥ 0.99 with confidence 0.95. Certified on the held-out texts: "
                  f"{main['calibration_layer_speedup']:.2f}x; on SST-2 dev: {main['dev_layer_speedup']:.2f}x at agreement "
                  f"{main['dev_agreement']:.4f}: **{'reached' if goal else 'not reached on dev'}**.", "",
              "Each exit alone, agreement with the original on dev (accuracy in brackets):", "",
              "| exits | " + " | ".join(f"exit {e['exit']}" for e in main["per_exit"]) + " |",
              "|---|" + "---|" * len(main["per_exit"])]
    for name, v in report["variants"].items():
        lines.append(f"| {name} | " + " | ".join(f"{e['agreement']:.3f} ({e['accuracy']:.1f})" for e in v["per_exit"]) + " |")
    lines += ["", "![agreement per exit and the accuracy/speed-up trade-off](retrofit_sst2.png)", "",
              "## The promise on resampled splits", "",
              f"Pool: {val['pool']}; 200 random halves calibrate, the other halves test; a violation is test agreement "
              f"below {val['consistency']:g}.", "",
              "| runner | guaranteed: violation rate [95% CI] | mean speed-up | point estimate: violation rate | mean speed-up |",
              "|---|---|---|---|---|"]
    for runner in ("eager", "ort-int8"):
        g, pt = val[runner]["guaranteed"], val[runner]["point_estimate"]
        target = val["consistency"] if runner == "eager" else val["int8_consistency"]
        lines.append(f"| {runner} (agreement ≥ {target:g}{' with the fp32 answers' if runner != 'eager' else ''}) | "
                     f"{g['violation_rate']:.3f} "
                     f"[{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}] | {g['mean_speedup']:.2f}x | {pt['violation_rate']:.3f} | "
                     f"{pt['mean_speedup']:.2f}x |")
    i8 = report["int8_calibration"]
    lines += ["", f"INT8 (ONNX Runtime dynamic, per channel) alone moves answers: its full model agrees with the fp32 "
                  f"original on {100 * val['int8_full_agreement']:.2f}% of the held-out texts, so `export --quantize int8`'s "
                  f"calibration for the eager promise ({i8['at_export']['goal']}) certifies no early exit (layer speed-up "
                  f"{i8['at_export']['calibration_layer_speedup']:.2f}x). `metabert calibrate --checkpoint CK --onnx INT8 "
                  f"--consistency {val['int8_consistency']:g}` asks for a promise INT8 can keep, against the fp32 answers: "
                  f"{i8['chosen']['name']} γ={i8['chosen']['threshold']:.4g}, {i8['chosen']['calibration_layer_speedup']:.2f}x "
                  "on the held-out texts."]
    rows = lat["rows"]
    base = rows["plain-eager_full"]["mean_ms"]
    held = rec["held_out"]
    half = held - held // 2  # validation() calibrates on the first half's size, tests on the rest
    lines += ["", f"δ = {val['delta']:g}: the guaranteed rule should break its promise on at most about "
                  f"{100 * val['delta']:.0f}% of the splits. A split's agreement is measured on its finite test half "
                  f"({half:,} texts), whose own sampling noise counts as violations some "
                  "splits whose true agreement keeps the promise, so the measured rate overstates the true one; "
                  "the rates above are read against the 95% intervals beside them.", "",
              "## Batch-1 latency on SST-2 dev", "",
              f"{lat['threads']} threads, {lat['repeats']} interleaved rounds after 20 warm-up examples, mean over the "
              f"872 dev sentences (`metabert.bench.timing`); the "
              f"eager early exit runs {lat['eager_policy']}, the INT8 one {lat['ort_int8_policy']} (calibrated against "
              "the fp32 answers).", "",
              "| path | mean ms | p50 | p95 | vs original eager | accuracy | agreement with the original | mean exit layer |",
              "|---|---|---|---|---|---|---|---|"]
    names = {"plain-eager_full": "original, eager transformers", "eager_full": "retrofitted, eager, every layer",
             "eager_early": "retrofitted, eager, early exit", "plain-ort-int8_full": "original, plain export, ORT INT8",
             "ort-int8_full": "retrofitted, ORT INT8, every layer", "ort-int8_early": "retrofitted, ORT INT8, early exit"}
    for key, label in names.items():
        r = rows[key]
        lines.append(f"| {label} | {r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {base / r['mean_ms']:.2f}x | "
                     f"{r['accuracy']:.2f} | {r['agreement_with_original']:.4f} | {r['mean_exit_layer']:.2f} |")
    lines += ["", f"ORT INT8 early exit against the original's plain ORT INT8 export: "
                  f"{rows['plain-ort-int8_full']['mean_ms'] / rows['ort-int8_early']['mean_ms']:.2f}x.", "",
              "## What keeping the original model costs", "",
              f"metabert's own training on the same {ft['train_examples']:,} sentences (`metabert train --task sst2 "
              f"--max-train-samples {ft['train_examples']}`), dev accuracy along each model's entropy sweep, read at "
              f"the retrofitted model's dev speed-up ({main['dev_layer_speedup']:.2f}x):", "",
              "| model | last exit | at the same layer speed-up | train seconds |", "|---|---|---|---|",
              f"| retrofit (the original kept) | {main['dev_full_accuracy']:.2f} | "
              f"{at_speedup(main['curve'], main['dev_layer_speedup'], 'accuracy'):.2f} | "
              f"{ft['train_seconds']:.0f} + {rec['seconds']:.0f} |"]
    for method, t in report["trained"].items():
        lines.append(f"| `{method}` ({t['epochs']} epoch{'s' if t['epochs'] > 1 else ''}) | {t['per_exit_accuracy'][-1]:.2f} | "
                     f"{at_speedup(t['curve'], main['dev_layer_speedup'], 'accuracy'):.2f} | {t['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
