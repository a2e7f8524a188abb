"""How far the golden training runs (``tests/test_golden_training.py``) drift from the recorded
fingerprints when the float reductions change: the CPU's instruction set (emulated on this CPU with
PyTorch's ``ATEN_CPU_CAPABILITY``, oneDNN's ``ONEDNN_MAX_CPU_ISA`` and MKL's ``MKL_ENABLE_INSTRUCTIONS``
/ ``MKL_CBWR``) and the thread count. Each setting runs every golden case in a subprocess with its
environment set, through the test's own ``run_case``; the parent compares each result with the golden
file and with the other settings.

For every case and setting it records, over the weights fingerprint and over the floats of the log
(losses, scores; the ``best`` record included):

* ``abs``: the largest ``|got - golden|``;
* ``rel``: the largest ``|got - golden| / |golden|`` over the numbers with ``|golden| >= 1e-3``;
* ``tol``: the largest ``|got - golden| / max(|golden|, 1)``, the smallest TOLERANCE the test's
  comparison ``|got - golden| <= TOLERANCE * max(|golden|, 1)`` passes with, and where it is reached;
* ``exact``: how many of the other (non-float) entries differ (must be 0).

It also measures what the test must catch: a few cases trained with a changed setting (learning rate
1% higher, ...) on the native setting, with the same statistics (``changes``), and sums it all up
against the test's TOLERANCE (``summary``: the tolerance over the worst deviation and over the widest
disagreement between two settings; each change's deviation in tolerances).

    PYTHONPATH=src python benchmarks/golden_spread.py [--out results/golden_spread.json]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILE = ROOT / "tests" / "test_golden_training.py"
REL_FLOOR = 1e-3  # `rel` ignores golden values smaller than this (sums of near-zero tensors)

AMD_LIKE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# name -> (environment, torch threads before run_case, keep run_case's pin to 1 thread)
SETTINGS: dict[str, tuple[dict[str, str], int, bool]] = {
    "native-1t": ({}, 1, True),
    "native-2t": ({}, 2, True),
    "aten-avx2-1t": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1, True),
    "aten-avx2-2t": ({"ATEN_CPU_CAPABILITY": "avx2"}, 2, True),
    "aten-avx512-1t": ({"ATEN_CPU_CAPABILITY": "avx512"}, 1, True),
    "aten-default-1t": ({"ATEN_CPU_CAPABILITY": "default"}, 1, True),
    "onednn-avx2-1t": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, True),
    "mkl-avx2-1t": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1, True),
    "mkl-cbwr-avx2-1t": ({"MKL_CBWR": "AVX2"}, 1, True),
    "mkl-cbwr-compatible-1t": ({"MKL_CBWR": "COMPATIBLE"}, 1, True),
    "amd-like-1t": (AMD_LIKE, 1, True),
    "amd-like-2t": (AMD_LIKE, 2, True),
    "amd-like-cbwr-avx2-1t": ({**AMD_LIKE, "MKL_CBWR": "AVX2"}, 1, True),
    # not what the test does (it pins torch to 1 thread): what the pin protects against
    "native-2t-unpinned": ({}, 2, False),
    "amd-like-2t-unpinned": (AMD_LIKE, 2, False),
}
# code paths no CI machine takes by default: ATen without SIMD, MKL's conservative reproducibility mode
STRESS = {"aten-default-1t", "mkl-cbwr-compatible-1t"}
# changes the golden test must catch: case -> option overrides (trained on the native setting)
CHANGES: dict[str, dict] = {
    "lr+1%": {"learning_rate": 1.01e-3},
    "weight_decay+1%": {"weight_decay": 0.0101},
    "warmup 0.1->0.2": {"warmup": 0.2},
    "grad_clip 1->0.99": {"grad_clip": 0.99},
}
CHANGE_CASES = ("joint", "meta-adam", "pkd-patient")


def load_test_module():
    spec = importlib.util.spec_from_file_location("golden_test", TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe() -> dict:
    """What this process's libraries dispatch to; MKL's and oneDNN's verbose lines go to fd 1."""
    import torch

    a = torch.randn(64, 64)
    with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
        torch.mm(a, a)
    sys.stdout.flush()
    return {"aten_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def worker(args) -> None:
    import torch

    test = load_test_module()
    torch.set_num_threads(args.threads)
    info = {**probe(), "threads": torch.get_num_threads()}
    if args.unpinned:  # run_case pins torch to 1 thread: make the pin a no-op to see what it protects from
        torch.set_num_threads = lambda n: None
    results = {}
    overrides = json.loads(args.overrides) if args.overrides else {}
    for case in args.cases:
        with tempfile.TemporaryDirectory() as folder:
            if overrides:
                test.CASES = {**test.CASES, case: {**test.CASES[case], **overrides}}
            results[case] = test.run_case(case, Path(folder))
    Path(args.worker).write_text(json.dumps({"info": info, "cases": results}))


def floats_and_others(got, want, path=""):
    """Yield (path, got, want, is_float) for every leaf of the golden structure."""
    if isinstance(want, float):
        yield path, got, want, True
    elif isinstance(want, dict) and isinstance(got, dict) and list(got) == list(want):
        for k in want:
            yield from floats_and_others(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        for i, (g, w) in enumerate(zip(got, want)):
            yield from floats_and_others(g, w, f"{path}[{i}]")
    else:
        yield path, got, want, False


def deviation(got, want) -> dict:
    worst = {"abs": 0.0, "rel": 0.0, "tol": 0.0, "at": None, "exact": 0}
    for path, g, w, is_float in floats_and_others(got, want):
        if not is_float or isinstance(g, bool) or not isinstance(g, (int, float)):
            worst["exact"] += g != w
            continue
        d = abs(g - w)
        worst["abs"] = max(worst["abs"], d)
        if abs(w) >= REL_FLOOR:
            worst["rel"] = max(worst["rel"], d / abs(w))
        if d / max(abs(w), 1.0) > worst["tol"]:
            worst["tol"], worst["at"] = d / max(abs(w), 1.0), path
    return worst


def compare(got: dict, want: dict) -> dict:
    """Deviation of one case's run from another: weights fingerprint, log floats, the rest exactly."""
    scores_got = {"log": got["log"], "best": got["best"]}
    scores_want = {"log": want["log"], "best": want["best"]}
    rest = [k for k in want if k not in ("weights", "log", "best")]
    return {"weights": deviation(got["weights"], want["weights"]), "log": deviation(scores_got, scores_want),
            "other_keys_equal": all(got[k] == want[k] for k in rest)}


def run_setting(env: dict, threads: int, pinned: bool, cases, overrides=None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out), "--threads", str(threads),
                   "--cases", *cases]
        if not pinned:
            command.append("--unpinned")
        if overrides:
            command += ["--overrides", json.dumps(overrides)]
        full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **env}
        done = subprocess.run(command, env=full_env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"worker failed ({env}, {threads} threads):\n{done.stderr[-3000:]}")
        data = json.loads(out.read_text())
    mkl = [line for line in done.stdout.splitlines() if line.startswith("MKL_VERBOSE") and " for " in line]
    data["info"]["mkl"] = mkl[0].split(" for ", 1)[1].split(", Lnx")[0] if mkl else None
    return data


def cpu() -> dict:
    info = {"machine": platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and "model" not in info:
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
            break
    return info


def summarize(per_setting: dict, key: str) -> dict:
    """Over all cases: the worst of each statistic, per setting."""
    out = {}
    for name, cases in per_setting.items():
        worst = max(cases.items(), key=lambda kv: kv[1][key]["tol"])
        out[name] = {"abs": max(c[key]["abs"] for c in cases.values()),
                     "rel": max(c[key]["rel"] for c in cases.values()),
                     "tol": worst[1][key]["tol"], "at": f"{worst[0]}{worst[1][key]['at']}"}
    return out


def worst_of(vs_golden: dict, key: str, names: list[str], tolerance: float) -> dict:
    name, v = max(((n, s) for n, s in summarize({n: vs_golden[n] for n in names}, key).items()),
                  key=lambda kv: kv[1]["tol"])
    return {"setting": name, **v, "tolerance_over_it": tolerance / v["tol"] if v["tol"] else None}


def widest(runs: dict, names: list[str], cases: list[str]) -> dict:
    """The widest disagreement between two of these settings (tol of one against the other)."""
    best = {"weights_tol": 0.0, "case": None, "between": None, "log_tol": 0.0}
    for a, b in itertools.combinations(names, 2):
        for case in cases:
            c = compare(runs[a][case], runs[b][case])
            best["log_tol"] = max(best["log_tol"], c["log"]["tol"])
            if c["weights"]["tol"] > best["weights_tol"]:
                best.update(weights_tol=c["weights"]["tol"], case=case, between=[a, b])
    return best


def dump(obj, depth: int = 0) -> str:
    """JSON, indented for the first three levels, one line per entry below."""
    if depth >= 3 or not isinstance(obj, (dict, list)) or not obj:
        return json.dumps(obj)
    pad = " " * (depth + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dump(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    return "[\n" + ",\n".join(f"{pad}{dump(v, depth + 1)}" for v in obj) + "\n" + " " * depth + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "golden_spread.json"))
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--no-changes", action="store_true", help="skip the changed-training runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--unpinned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    test = load_test_module()
    golden = json.loads(test.GOLDEN.read_text())
    cases = sorted(test.CASES)
    runs, info = {}, {}
    for name in args.settings:
        env, threads, pinned = SETTINGS[name]
        print(f"{name} ...", file=sys.stderr, flush=True)
        data = run_setting(env, threads, pinned, cases)
        runs[name], info[name] = data["cases"], {**data["info"], "env": env, "pinned_to_1_thread": pinned}
    vs_golden = {name: {case: compare(run[case], golden["cases"][case]) for case in cases}
                 for name, run in runs.items()}
    pinned = [n for n in runs if SETTINGS[n][2]]
    spread = {"all": widest(runs, pinned, cases), "simd": widest(runs, [n for n in pinned if n not in STRESS], cases)}
    reference = args.settings[0]
    vs_reference = {name: {k: max(compare(runs[name][c], runs[reference][c])[k]["tol"] for c in cases)
                           for k in ("weights", "log")} for name in runs if name != reference}
    changes = {}
    if not args.no_changes:
        for label, overrides in CHANGES.items():
            print(f"change {label} ...", file=sys.stderr, flush=True)
            data = run_setting({}, 1, True, CHANGE_CASES, overrides)
            changes[label] = {"overrides": overrides, "cases": {
                case: compare(data["cases"][case], golden["cases"][case]) for case in CHANGE_CASES}}
    import torch

    tolerance = test.TOLERANCE
    summary = {
        "test_tolerance": tolerance,
        "stress_settings": sorted(STRESS),
        "worst_vs_golden": {
            group: {k: worst_of(vs_golden, k, names, tolerance) for k in ("weights", "log")}
            for group, names in (("all", list(runs)), ("simd", [n for n in runs if n not in STRESS]))},
        "widest_between_pinned_settings": {
            group: {**w, "tolerance_over_it": tolerance / w["weights_tol"] if w["weights_tol"] else None}
            for group, w in spread.items()},
        f"deviation_from_{reference}": vs_reference,
        "changes_in_tolerances": {label: {case: {"weights": v["weights"]["tol"] / tolerance,
                                                 "log": v["log"]["tol"] / tolerance}
                                          for case, v in change["cases"].items()}
                                  for label, change in changes.items()},
    }
    result = {
        "what": "deviation of tests/test_golden_training.py's runs from tests/golden/train_fingerprints.json "
                "under emulated CPU instruction sets and thread counts",
        "command": "PYTHONPATH=src python benchmarks/golden_spread.py",
        "date": datetime.date.today().isoformat(),
        "cpu": cpu(), "torch": torch.__version__, "python": platform.python_version(),
        "golden_torch": golden.get("torch"),
        "statistics": {"abs": "max |got - golden|", "rel": f"max |got - golden| / |golden|, |golden| >= {REL_FLOOR}",
                       "tol": "max |got - golden| / max(|golden|, 1): the smallest TOLERANCE the test passes with",
                       "at": "where tol is reached; a weights path ends in [0] (sum), [1] (sum of squares) or "
                             "[2:] (first elements)"},
        "settings": info,
        "summary": summary,
        "worst_per_setting": {"weights": summarize(vs_golden, "weights"), "log": summarize(vs_golden, "log")},
        "exact_mismatches": {name: sum(c["weights"]["exact"] + c["log"]["exact"] + (not c["other_keys_equal"])
                                       for c in per.values()) for name, per in vs_golden.items()},
        "changes": changes,
        "per_case": vs_golden,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(dump(result) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
