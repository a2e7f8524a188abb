"""``bench``: the whole speed measurement of a checkpoint as one library call returning a typed report
(``metabert bench`` parses its options into ``BenchOptions``, calls it, prints and writes the report).

Every runner (eager PyTorch and ONNX Runtime, fp32 and INT8) runs the full model and early exit on
the same dev inputs in one process, each early-exiting with its own γ: calibrated here on the
held-out slice with that runner's logits (``max_drop``/``target_speedup``), or the one stored for it
in the checkpoint. See ``metabert.bench.timing`` for how time is measured.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from metabert.data import DEFAULT_MAX_LENGTH
from metabert.bench import profile as profiling
from metabert.bench import report as bench_report
from metabert.bench.timing import INTERLEAVE, Variant, run_bench, speedups, time_tokenizer, variants
from metabert.common.machine import hardware, hardware_summary
from metabert.common.options import option
from metabert.data import metrics
from metabert.data import tasks as data_mod
from metabert.data.batching import collate, encode, model_inputs
from metabert.deploy.onnx_fused import FUSED_POLICIES
from metabert.deploy.plain import PLAIN, plain_runners
from metabert.deploy.runners import RUNNERS, export_for, load_runner, temporary_folder
from metabert.engine.dataset import runner_logits
from metabert.engine.policies import policy_from_dict
from metabert.engine.resolve import resolve, resolve_name
from metabert.eval.calibrate import calibration_set, evaluation_set, guaranteed_record, point_record
from metabert.model.multi_exit import MultiExitBert



@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how. Each field is the ``metabert bench`` option of the same name, its help
    written here once (``metabert.common.options``); the data and policy options are the ones every
    command shares (``metabert.commands.common``)."""

    task: str | None = None
    split: str = option("dev", help="the split to measure on (default dev)")
    data_dir: str | None = None
    dev_file: str | None = None
    max_seq_length: int = DEFAULT_MAX_LENGTH
    policy: str | None = None
    threshold: float | None = None
    patience: int | None = None
    target_speedup: float | None = option(None, help="calibrate each runner (held-out data) for this layer speed-up")
    max_drop: float | None = option(None, help="calibrate each runner (held-out data) for at most this score drop")
    calibration_data: str | None = option(None, help="file to calibrate on (default: the training slice held out)")
    confidence: float = option(0.95, help="--max-drop holds on new data with this confidence, as `metabert calibrate` "
                                          "(default 0.95)")
    no_guarantee: bool = False
    runners: tuple[str, ...] = option(RUNNERS, help=f"comma-separated, of {', '.join(RUNNERS)}")
    repeats: int = option(5, help="interleaved rounds of every timing (default 5)")
    interleave: str = option("block", choices=INTERLEAVE,
                             help="batch 1: each variant runs 50 consecutive examples in turn, block after block "
                                  "(block, as served) or each example is run by every variant in turn (example; "
                                  "evicts each other's weights from the caches)")
    warmup: int = option(20, help="examples each variant runs before it is timed (default 20)")
    max_examples: int | None = option(None, help="bench on the first N examples only")
    batch_size: int = option(32, help="batch size of the throughput test")
    onnx: str | None = option(None, help="fp32 exported folder (default: export to a temporary folder)")
    onnx_int8: str | None = option(None, help="INT8 exported folder (default: quantize the fp32 export, dynamic)")
    threads: int = option(default_factory=torch.get_num_threads, help="threads for PyTorch and ORT")
    profile_examples: int = option(100, help="examples for the batch-1 profiles (0: none)")
    memory: bool = option(True, help="peak memory of each runner (fresh processes)")
    # the plain recipes timed beside ours (deploy.plain; OpenVINO where installed)
    plain: tuple[str, ...] = option(PLAIN, help="the plain full-model recipes timed beside ours, comma-separated, of "
                                                + ", ".join(PLAIN) + " (default: all; OpenVINO where installed; '' "
                                                                     "for none)")

    def __post_init__(self):
        unknown = [r for r in self.runners if r not in RUNNERS]
        if unknown:
            raise ValueError(f"unknown runner(s) {', '.join(unknown)}; choose from {', '.join(RUNNERS)}")
        if self.interleave not in INTERLEAVE:
            raise ValueError(f"interleave must be one of {INTERLEAVE}, got {self.interleave!r}")
        unknown = [r for r in self.plain if r not in PLAIN]
        if unknown:
            raise ValueError(f"unknown plain recipe(s) {', '.join(unknown)}; choose from {', '.join(PLAIN)}")
        if self.target_speedup is not None and self.max_drop is not None:
            raise ValueError("give --target-speedup or --max-drop, not both")


@dataclass
class BenchReport:
    """One run of ``bench``: every variant's figures (``variants``), one row per path and batch size
    (``rows``), the deployment targets, every runner's per-exit dev scores, profiles, artifact sizes,
    memory, and where it ran. ``to_dict`` is the JSON ``metabert bench --output`` writes."""

    task: str
    split: str
    checkpoint: str
    num_examples: int
    policy_source: str
    calibration: dict[str, str]
    rows: list[dict]
    targets: list[dict]
    variants: dict[str, dict]
    per_exit: dict[str, list[float]]
    profile: dict[str, dict]
    rss_floor_mb: float | None
    tokenization: dict
    batch_size: int
    repeats: int
    interleave: str
    warmup: int
    threads: int
    ratios: dict = field(default_factory=dict)
    plain_notes: dict[str, str] = field(default_factory=dict)  # plain recipes left out, and why
    layer_profile: dict[str, dict] = field(default_factory=dict)  # per ort runner: one layer's kernels, its bound
    rows_profile: dict[str, dict] = field(default_factory=dict)  # per runner: a layer step's cost per row, by rows
    date: str = field(default_factory=lambda: dt.date.today().isoformat())
    hardware: str = field(default_factory=hardware)
    hardware_summary: str = field(default_factory=hardware_summary)
    python: str = field(default_factory=platform.python_version)
    load_average_start: float = 0.0
    load_average_end: float = 0.0
    json_name: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        ratios = out.pop("ratios")
        return {**out, **ratios}


def pick_policy(model: MultiExitBert, runner, options: BenchOptions, held=None):
    """(policy, where it came from, a line on its calibration) for ``runner``: calibrated on the
    held-out slice with its own logits, or the record stored for it (``metabert.engine.resolve``)."""
    name, patience, _ = resolve_name(options.policy, options.patience, model.config.exit_policy, runner.name)
    if options.target_speedup is None and options.max_drop is None:
        resolved = resolve(name=options.policy, threshold=options.threshold, patience=options.patience,
                           stored=model.config.exit_policy, runner=runner.name)
        return resolved.policy, resolved.source, resolved.source
    enc, what = held
    metric = data_mod.spec_from_dict(model.config.task).metric
    logits = runner_logits(runner, enc, model.tokenizer.pad_token_id)
    if options.max_drop is not None and not options.no_guarantee:  # what `metabert calibrate` stores
        record = guaranteed_record(logits, enc.labels, metric, name, patience, max_drop=options.max_drop,
                                   delta=round(1 - options.confidence, 12), chosen_on=what, runner=runner.name)
        goal = f"max drop {options.max_drop} with confidence {options.confidence:g}"
    else:
        record = point_record(logits, enc.labels, metric, name, patience, target_speedup=options.target_speedup,
                              max_drop=options.max_drop, chosen_on=what)
        goal = (f"target speed-up {options.target_speedup}x" if options.target_speedup
                else f"max drop {options.max_drop} (point estimate, no guarantee)")
    policy, promise = policy_from_dict(record), record.get("promise")
    note = (f"{policy.describe()}: calibration score {record['calibration_score']:.2f} (last exit "
            f"{record['calibration_last_exit_score']:.2f}), layer speed-up {record['calibration_layer_speedup']:.2f}x"
            + ("" if promise is None else ", " + (f"certified (p = {promise['p_value']:.3f})" if promise["certified"]
                                                  else "nothing certified: the full model")))
    return policy, f"calibrated per runner with its own logits for {goal} on {what}", note


def bench(checkpoint: str | Path, options: BenchOptions | None = None, progress: bool = True) -> BenchReport:
    """Measure ``checkpoint`` as ``options`` say (see the module docstring)."""
    options = options or BenchOptions()
    torch.set_num_threads(options.threads)
    load_start = os.getloadavg()[0]
    model = MultiExitBert.from_pretrained(checkpoint).eval()
    task, spec, dataset = evaluation_set(model, options.task, options.split, options.data_dir, options.dev_file)
    if options.max_examples:
        dataset = data_mod.Dataset(dataset.examples[: options.max_examples], dataset.label_names, dataset.source)
    encoded = encode(dataset, model.tokenizer, options.max_seq_length)
    wanted = list(options.runners)
    bases = {name.removesuffix("-single") for name in wanted}  # a single file lives in its folder's export
    folders = {}
    if "ort" in bases or "ort-int8" in bases:
        folders["ort"] = options.onnx or export_for(model, checkpoint, "ort")
    if "ort-int8" in bases:
        if options.onnx_int8:
            folders["ort-int8"] = options.onnx_int8
        else:
            from metabert.deploy.quantize import quantize_export

            folders["ort-int8"] = quantize_export(folders["ort"], temporary_folder("metabert-onnx-int8-"))
    runners = [load_runner(name, model, folders.get(name.removesuffix("-single")), checkpoint, options.threads)
               for name in wanted]
    held = None
    if options.target_speedup is not None or options.max_drop is not None:
        data, what = calibration_set(model, options.data_dir, options.calibration_data)
        held = (encode(data, model.tokenizer, options.max_seq_length), what)
    policies, sources, calibration = {}, {}, {}
    stepped = [r for r in runners if not r.name.endswith("-single")]  # runners with all-exit logits
    for runner in stepped:
        policies[runner.name], sources[runner.name], calibration[runner.name] = pick_policy(model, runner, options, held)
    for runner in runners:
        base = runner.name.removesuffix("-single")
        if runner.name != base:  # the single file answers with its folder's runner's γ (the same logits)
            if base in policies:
                policies[runner.name], sources[runner.name] = policies[base], sources[base]
                calibration[runner.name] = f"{calibration[base]} (as {base})"
            else:
                policies[runner.name], sources[runner.name], calibration[runner.name] = pick_policy(
                    model, runner, dataclasses.replace(options, target_speedup=None, max_drop=None), held)
    per_exit = {}
    for runner in stepped:
        logits = runner_logits(runner, encoded, model.tokenizer.pad_token_id)
        per_exit[runner.name] = [metrics.compute(spec.metric, logits[i].argmax(-1).tolist(), encoded.labels)["score"]
                                 for i in range(runner.num_layers)]
    plain, plain_notes = [], {}
    if options.plain:
        try:  # the held-out slice read for the policies above, else now
            held_enc = held[0] if held is not None else encode(
                calibration_set(model, options.data_dir, options.calibration_data)[0], model.tokenizer,
                options.max_seq_length)
            calibration_inputs = [model_inputs(collate(held_enc, [i], model.tokenizer.pad_token_id))
                                  for i in range(min(300, len(held_enc)))]  # NNCF's calibration (never dev)
        except ValueError:
            calibration_inputs = None
        plain, plain_notes = plain_runners(model, options.plain, temporary_folder("metabert-plain-"), options.threads,
                                           calibration_inputs)
    timed = variants(runners, policies) + [Variant(r, None) for r in plain]
    results = run_bench(model, encoded, spec.metric, timed, options.repeats, options.warmup,
                        options.batch_size, progress=progress, interleave=options.interleave)
    profile, layer_profile, rows_profile = {}, {}, {}
    if options.profile_examples:
        singles = [model_inputs(collate(encoded, [i], model.tokenizer.pad_token_id)) for i in range(len(encoded))]
        whole = max(1, min(len(encoded), options.profile_examples) // options.batch_size)  # whole batches
        batches = [model_inputs(collate(encoded, list(range(s, min(s + options.batch_size, len(encoded)))),
                                        model.tokenizer.pad_token_id))
                   for s in range(0, whole * options.batch_size, options.batch_size)]
        rows = sorted({options.batch_size} | {r for r in (16, 8, 4, 2, 1) if r < options.batch_size}, reverse=True)
        for runner in stepped:
            rows_profile[runner.name] = profiling.profile_rows(runner, batches, rows)
        for runner in stepped:
            if runner.name.startswith("ort") and policies[runner.name].name in FUSED_POLICIES:
                profile[runner.name] = profiling.profile_ort(runner, singles, policies[runner.name],
                                                             options.profile_examples)
                kernels = profiling.layer_kernels(runner, singles, count=options.profile_examples)
                layer_profile[runner.name] = {**kernels, "bound": profiling.layer_bound(runner, kernels["tokens_mean"],
                                                                                    kernels["hidden"])}
            elif runner.name.startswith("eager"):
                profile[runner.name] = profiling.profile_eager(runner, singles, policies[runner.name],
                                                               options.profile_examples)
    artifacts = {r.name: bench_report.artifact_bytes(r, checkpoint) for r in runners + plain}
    memory, floor = {}, None
    if options.memory:
        texts = [e.text for e in dataset.examples]
        floor = bench_report.peak_rss_mb("none", str(checkpoint), None, texts, options.batch_size, options.threads)
        for r in runners:
            memory[r.name] = bench_report.peak_rss_mb(r.name, str(checkpoint), folders.get(r.name.removesuffix("-single")), texts,
                                                      options.batch_size, options.threads)
    one_source = (sources[runners[0].name] if len(set(sources.values())) == 1
                  else "; ".join(f"{k}: {v}" for k, v in sources.items()))
    texts = [(e.text, e.text_pair) for e in dataset.examples]
    return BenchReport(
        task=task, split=options.split, checkpoint=Path(checkpoint).name, num_examples=len(dataset),
        policy_source=one_source, calibration=calibration,
        rows=bench_report.rows(results, options.batch_size, artifacts, memory),
        targets=bench_report.targets(results, options.batch_size, artifacts), variants=results, per_exit=per_exit,
        profile=profile, layer_profile=layer_profile, rows_profile=rows_profile, rss_floor_mb=floor,
        tokenization=time_tokenizer(model.tokenizer, texts, options.max_seq_length, options.batch_size),
        batch_size=options.batch_size, repeats=options.repeats, interleave=options.interleave, warmup=options.warmup,
        threads=options.threads, ratios=speedups(results, options.batch_size), plain_notes=plain_notes,
        load_average_start=load_start, load_average_end=os.getloadavg()[0])
