"""Choose an exit policy's threshold (or patience) for a required speed-up or an accuracy budget.

MetaBERT says γ is "adjusted according to the required speed-up ratio"; here it is chosen
automatically on data that is not the set we report on: by default the seeded slice of the training
file that ``metabert train`` held out (recorded in the checkpoint), or a file the user gives.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from metabert.data import DEFAULT_MAX_LENGTH
from metabert.data import tasks as data_mod
from metabert.data import metrics as metrics
from metabert.eval import risk as risk
from metabert.data.batching import Encoded, encode, tokenize
from metabert.eval.evaluate import candidate_policies, simulate
from metabert.engine.policies import policy_to_dict

log = logging.getLogger(__name__)


def evaluation_set(model, task: str | None = None, split: str = "dev", data_dir: str | None = None,
                   file: str | None = None) -> tuple[str, data_mod.TaskSpec, data_mod.Dataset]:
    """The set to evaluate a checkpoint on: ``split`` of the task it was trained on (or of ``task``);
    ``--task custom`` reads ``file`` with the checkpoint's columns and labels. (task, spec, dataset)."""
    stored = model.config.task
    task = task or stored.get("name")
    if not task:
        raise ValueError("the checkpoint records no task; pass --task")
    if task == "custom":
        if not file:
            raise ValueError("--task custom needs --dev-file")
        if stored.get("name") != "custom":
            raise ValueError("--task custom needs a checkpoint trained with --task custom (it holds the columns)")
        spec = data_mod.for_file(data_mod.spec_from_dict(stored), file)
        return task, spec, data_mod.read_file(Path(file), spec, model.config.label_names)
    spec = data_mod.get_task(task)
    names = tuple(model.config.label_names)
    if tuple(spec.labels) != names:
        by_index = data_mod.label_index(names)
        if len(spec.labels) != len(names) or any(by_index.get(label) != i for i, label in enumerate(spec.labels)):
            raise ValueError(f"checkpoint labels {list(names)} do not match task {task} labels {list(spec.labels)}")
        log.info("task %s labels %s read as the checkpoint's classes by index: %s", task, list(spec.labels),
                 ", ".join(f"{label} -> {name}" for label, name in zip(spec.labels, names)))
    return task, spec, data_mod.load_glue(task, split, data_dir)


def data_name(source: str, task: str | None) -> str:
    """A data file as results and docs name it: relative to the data folder for a GLUE task
    (``SST-2/train.tsv``), else its file name; never a path of the machine that read it."""
    path = Path(source)
    if task and task != "custom":
        return f"{path.parent.name}/{path.name}"
    return path.name


def calibration_set(model, data_dir: str | None = None, file: str | None = None) -> tuple[data_mod.Dataset, str]:
    """The calibration data and a sentence saying what it is."""
    spec = data_mod.spec_from_dict(model.config.task) if model.config.task else None
    if spec is None:
        raise ValueError("the checkpoint records no task; pass --task and --calibration-data")
    if file:
        if spec.name == "custom":
            spec = data_mod.for_file(spec, file)
        dataset = data_mod.read_file(Path(file), spec, model.config.label_names)
        return dataset, f"{Path(file).name} ({len(dataset)} examples, given with --calibration-data)"
    record = model.config.calibration
    if not record or not record.get("count"):
        raise ValueError("the checkpoint holds no calibration slice (trained with --calibration-fraction 0); "
                         "pass --calibration-data FILE")
    if spec.name != "custom" and (data_dir or not Path(record["source"]).is_file()):
        full = data_mod.load_glue(spec.name, "train", data_dir)
    else:
        full = data_mod.read_file(Path(record["source"]), spec, model.config.label_names)
    rows = record.get("rows", len(full))  # checkpoints before 0.2 record the fraction that made the count
    if len(full) != rows or ("rows" not in record and round(len(full) * record["fraction"]) != record["count"]):
        raise ValueError(f"{full.source} has {len(full)} examples but the checkpoint's calibration slice was cut "
                         f"from {record.get('rows', 'another number of')} rows: is it the same training file?")
    _, held, _ = data_mod.split_off(full, record["count"], record["seed"])
    what = (f"the held-out {record['fraction']:.0%} of {data_name(full.source, spec.name)} (seed {record['seed']}, {len(held)} examples, "
            "never trained on)")
    return held, what


def choose(logits: torch.Tensor, labels: list[int], metric: str, policy: str = "entropy", patience: int = 2,
           target_speedup: float | None = None, max_drop: float | None = None, count: int = 64) -> dict:
    """Pick a policy from ``candidate_policies``.

    target_speedup S: the least aggressive candidate whose layer speed-up is at least S (the most
    accurate one, in expectation). max_drop P: the fastest candidate whose score is at most P points
    below the last exit's score on the same data.
    Returns {"policy": ExitPolicy, "result": its simulated ``ExitRun``, "full_score": last exit's score}.
    """
    if (target_speedup is None) == (max_drop is None):
        raise ValueError("give exactly one of target_speedup and max_drop")
    candidates = [(p, simulate(logits, labels, metric, p))
                  for p in candidate_policies(logits, policy, patience, count)]
    full = metrics.compute(metric, logits[-1].argmax(-1).tolist(), labels)["score"]
    if target_speedup is not None:
        if target_speedup < 1:
            raise ValueError(f"target speed-up must be >= 1, got {target_speedup}")
        ok = [c for c in candidates if c[1].layer_speedup >= target_speedup - 1e-9]
        if not ok:
            best = max(c[1].layer_speedup for c in candidates)
            raise ValueError(f"no {policy} setting reaches {target_speedup}x on the calibration data (at most {best:.2f}x)")
        chosen = min(ok, key=lambda c: (c[1].layer_speedup, -c[1].score))
    else:
        if max_drop < 0:
            raise ValueError(f"max drop must be >= 0 points, got {max_drop}")
        ok = [c for c in candidates if c[1].score >= full - max_drop - 1e-9]
        chosen = max(ok, key=lambda c: (c[1].layer_speedup, c[1].score))
    return {"policy": chosen[0], "result": chosen[1], "full_score": full}


def unlabelled_set(model, file: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> tuple[Encoded, str]:
    """Texts without labels for ``--consistency`` (e.g. real traffic): a .txt file holds one text
    per line (single-text tasks); TSV/CSV/JSONL files are read with the checkpoint's text columns
    (``metabert.data.tasks.texts_of``). Returns (encoded texts, a sentence saying what they are)."""
    path = Path(file)
    spec = data_mod.spec_from_dict(model.config.task) if model.config.task else None
    texts, pairs = [], []
    for row in data_mod.texts_of(path, spec):
        texts.append(row.values[0])
        pairs.append(row.values[1])
    if not texts:
        raise data_mod.DataError(f"{path}: no texts")
    pairs = pairs if pairs and all(p is not None for p in pairs) else None
    encoded = tokenize(model.tokenizer, texts, pairs, max_length).encoded
    return encoded, f"{path.name} ({len(texts)} unlabelled texts, given with --texts)"


def point_record(logits: torch.Tensor, labels: list[int], metric: str, policy: str = "entropy", patience: int = 2,
                 target_speedup: float | None = None, max_drop: float | None = None, chosen_on: str = "") -> dict:
    """The checkpoint's ``exit_policy`` record for the point estimate of ``choose`` (a target
    speed-up, or a drop budget with no guarantee)."""
    choice = choose(logits, labels, metric, policy, patience, target_speedup=target_speedup, max_drop=max_drop)
    result = choice["result"]
    goal = (f"target layer speed-up {target_speedup}x" if target_speedup is not None
            else f"at most {max_drop} points below the last exit on the calibration data (no guarantee)")
    return {
        **policy_to_dict(choice["policy"]),
        "chosen_on": chosen_on,
        "goal": goal,
        "calibration_score": result.score,
        "calibration_last_exit_score": choice["full_score"],
        "calibration_layer_speedup": result.layer_speedup,
    }


def guaranteed_record(logits: torch.Tensor, labels: list[int] | None, metric: str, policy: str = "entropy",
                      patience: int = 2, max_drop: float | None = None, consistency: float | None = None,
                      delta: float = risk.DEFAULT_DELTA, chosen_on: str = "", runner: str = "eager",
                      reference=None, reference_name: str = "") -> dict:
    """The checkpoint's ``exit_policy`` record for a risk-controlled choice (``risk.choose_guaranteed``)
    from all-exit logits of any runner: the policy, and under ``promise`` what was promised (budget,
    δ, metric, what is bounded, calibration size, runner) and the certificate (p-value, loss rate)."""
    choice = risk.choose_guaranteed(logits, labels, policy, patience, max_drop=max_drop,
                                    consistency=consistency, delta=delta, reference=reference)
    chosen = choice["policy"]
    if max_drop is not None:
        goal = f"at most {max_drop:g} points below the full model with confidence {1 - delta:g}"
    else:
        goal = (f"agreeing with {reference_name or 'the full model'} on at least {100 * consistency:g}% of inputs "
                f"with confidence {1 - delta:g}")
    record = {
        **policy_to_dict(chosen),
        "runner": runner,
        "chosen_on": chosen_on,
        "goal": goal,
        "calibration_layer_speedup": choice["layer_speedup"],
        "promise": {
            "kind": "max_drop" if max_drop is not None else "consistency",
            "max_drop": max_drop, "consistency": consistency, "delta": delta, "confidence": 1 - delta,
            "metric": metric if max_drop is not None else None,
            "bounded": f"rate of examples where {choice['loss']} ≤ {choice['alpha']:g}",
            "decomposable": max_drop is None or metric == "accuracy",
            "calibration_size": choice["n"], "runner": runner, "certified": choice["certified"],
            "compared_with": reference_name or f"{runner}'s own full model",
            "p_value": choice["p_value"], "calibration_loss_rate": choice["loss_rate"],
        },
    }
    if labels is not None:
        result = simulate(logits, labels, metric, chosen)
        record["calibration_score"] = result.score
        record["calibration_last_exit_score"] = metrics.compute(metric, logits[-1].argmax(-1).tolist(), labels)["score"]
    return record


def ways_out(promise: dict, checkpoint: str | Path | None = None) -> str:
    """What a user can do when a risk-controlled calibration certified no early exit (``promise``: a
    record's ``promise``): the commands that give it more data, or ask for a promise it can keep."""
    ck = str(checkpoint) if checkpoint else "CHECKPOINT"
    n, kind = promise["calibration_size"], promise["kind"]
    need = risk.min_examples(1 - promise["consistency"] if kind == "consistency" else promise["max_drop"] / 100,
                             promise["delta"])
    budget = (f"--consistency {promise['consistency']:g}" if kind == "consistency" else f"--max-drop {promise['max_drop']:g}")
    lines = [f"{n} calibration examples certified no early exit for this promise (even with no loss at all it "
             f"needs {need}; a real early exit needs several times that), so the full model is kept. Ways out:",
             f"  - more labelled rows: train again with a larger held-out slice (--calibration-fraction 0.2), or "
             f"`metabert calibrate --checkpoint {ck} {budget} --calibration-data FILE` on held-out labelled data;",
             f"  - unlabelled texts, as many as you have (real traffic will do): `metabert calibrate --checkpoint {ck} "
             "--consistency 0.99 --texts FILE` (agreement with the full model, no labels needed);",
             "  - a promise the data can keep: a larger budget (`--max-drop 2`), a lower confidence "
             "(`--confidence 0.9`), or the point estimate with no guarantee (`--no-guarantee`)."]
    return "\n".join(lines)


def calibration_texts(model, max_length: int = DEFAULT_MAX_LENGTH) -> tuple[Encoded, str]:
    """The unlabelled texts held out for calibration when the checkpoint was made from texts
    (``metabert retrofit``): its record names the file, its columns and the seeded slice."""
    record = model.config.calibration
    texts, pairs = [], []
    for row in data_mod.read_texts(record["source"], record["format"], record["columns"], record["header"]):
        texts.append(row.values[0])
        pairs.append(row.values[1])
        if len(texts) == record["rows"]:  # the slice was cut from the first rows (``--max-texts``)
            break
    if len(texts) != record["rows"]:
        raise ValueError(f"{record['source']} has {len(texts)} texts but the checkpoint's calibration slice was cut "
                         f"from {record['rows']}: is it the same file?")
    held = data_mod.held_out(len(texts), record["count"], record["seed"])
    pairs = [pairs[i] for i in held] if pairs and pairs[0] is not None else None
    encoded = tokenize(model.tokenizer, [texts[i] for i in held], pairs, max_length).encoded
    what = (f"the held-out {len(held)} of {Path(record['source']).name}'s {record['rows']} texts (seed {record['seed']}, "
            "never trained on)")
    return encoded, what


def calibrate_checkpoint(directory: str | Path, max_drop: float = 1.0, delta: float = risk.DEFAULT_DELTA,
                         data_dir: str | None = None, batch_size: int = 64, max_length: int = DEFAULT_MAX_LENGTH,
                         runner: str = "eager", onnx: str | Path | None = None,
                         consistency: float | None = None, store: bool = True, model=None) -> dict | None:
    """Risk-controlled calibration of a saved checkpoint on the slice held out when it was made, with
    ``runner``'s own logits (``onnx``: its export folder), stored in it as that runner's record (what
    ``metabert train`` and ``retrofit`` do last for eager, and ``metabert export --quantize int8`` for
    ort-int8). A labelled slice (``train``): at most ``max_drop`` points below the full model. Texts
    (``retrofit``): agreement with the fp32 model on at least ``consistency`` of inputs (default: the
    eager record's), so an INT8 runner's promise covers its quantization error too. None, with a
    warning, when there is no slice. ``store=False``: return the record without storing it.
    ``model``: the checkpoint already loaded (or just saved) by the caller, not read again."""
    from metabert.deploy.runners import load_runner
    from metabert.engine.dataset import run_dataset, runner_logits
    from metabert.engine.resolve import record_for, resolve_name, store_record
    from metabert.model.multi_exit import EagerRunner, MultiExitBert

    model = model if model is not None else MultiExitBert.from_pretrained(directory)
    if not (model.config.calibration or {}).get("count"):
        log.warning("%s: no held-out calibration slice (--calibration-fraction 0): not calibrated; predict will "
                    "run the full model until `metabert calibrate` is run", directory)
        return None
    backend = load_runner(runner, model, onnx, directory)
    name, patience, _ = resolve_name(None, None, model.config.exit_policy, backend.name)
    metric = data_mod.spec_from_dict(model.config.task).metric
    pad = model.tokenizer.pad_token_id
    if model.config.calibration.get("kind") == "texts":  # unlabelled texts: agreement with the fp32 model
        encoded, what = calibration_texts(model, max_length)
        stored = (record_for(model.config.exit_policy, "eager", warn=False)[0].get("promise") or {})
        consistency = consistency or stored.get("consistency") or 0.99
        logits = runner_logits(backend, encoded, pad, batch_size)
        reference, reference_name = None, ""
        if backend.name != "eager":  # an INT8 (or ORT) runner answers for the original fp32 model
            full, _ = run_dataset(EagerRunner(model), encoded, pad, None, batch_size)
            reference, reference_name = full.predictions.numpy(), "the fp32 model"
        record = guaranteed_record(logits, None, metric, name, patience, consistency=consistency, delta=delta,
                                   chosen_on=what, runner=backend.name, reference=reference,
                                   reference_name=reference_name)
    else:
        dataset, what = calibration_set(model, data_dir)
        encoded = encode(dataset, model.tokenizer, max_length)
        logits = runner_logits(backend, encoded, pad, batch_size)
        record = guaranteed_record(logits, encoded.labels, metric, name, patience, max_drop=max_drop, delta=delta,
                                   chosen_on=what, runner=backend.name)
    if store:
        model.with_config(exit_policy=store_record(model.config.exit_policy, backend.name, record))
        model.save_config(directory)
    return record
