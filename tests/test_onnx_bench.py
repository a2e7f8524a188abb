"""ONNX Runtime path and the benchmark harness, on the tiny model."""

import json

import pytest

from conftest import diversify, make_tiny
from metabert.bench.timing import flops_per_sample, layer_flops
from metabert.cli import main
from metabert.deploy.runners import RUNNERS
from metabert.engine import loop as engine
from metabert.engine.policies import POLICIES
from metabert.model.multi_exit import EagerRunner
from test_cli import train_tiny

pytest.importorskip("onnxruntime")
from metabert.deploy.onnx_export import FORMAT, check_export, export  # noqa: E402
from metabert.deploy.ort_runner import OrtMultiExit  # noqa: E402

TEXTS = ["good", "bad film", "a long and winding review of a film that was neither good nor bad",
         "truly awful", "wonderful", "meh , it was fine i guess", "the best", "not the best"] * 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = diversify(make_tiny(("neg", "pos", "mixed"), seed=5), seed=0).eval()
    folder = export(model, None, tmp_path_factory.mktemp("onnx"))
    return model, OrtMultiExit(folder)


def test_onnx_matches_pytorch_on_every_exit(exported):
    model, runtime = exported
    assert check_export(model, runtime) < 1e-4
    enc = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    full = engine.run_full(runtime, enc)
    assert (engine.run_full(EagerRunner(model), enc).logits - full.logits).abs().max() < 1e-4


@pytest.mark.parametrize("older", [1, 2])
def test_folder_of_an_older_export_is_refused_with_the_command_that_redoes_it(exported, tmp_path, older):
    """Format 1 folders (layer graphs fed the 0/1 mask) would run with wrong inputs, format 2 ones
    (BERT layout only) lack the layer inputs' description: refused by name."""
    from metabert.deploy.onnx_export import META_NAME

    meta = json.loads((exported[1].directory / META_NAME).read_text())
    assert meta["format"] == FORMAT
    if older == 1:
        del meta["format"]
    else:
        meta["format"] = older
        del meta["state"], meta["trim_padding"], meta["family"]
    (tmp_path / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"older metabert \(ONNX folder format {older}.*metabert export --checkpoint"):
        OrtMultiExit(tmp_path)


def test_flops_count_layers_and_heads():
    model = make_tiny(("a", "b"))
    full = flops_per_sample(model, [10], None)
    assert full > 3 * layer_flops(10, 32, 64)
    assert flops_per_sample(model, [10], [1]) < full / 2
    assert flops_per_sample(model, [10], [3]) > full  # every exit head paid for


def test_bench_command_end_to_end(tmp_path, capsys):
    ckpt, dev = train_tiny(tmp_path, "--calibration-fraction", "0.25")
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(ckpt), "--task", "custom", "--dev-file", str(dev),
                 "--target-speedup", "1.2", "--repeats", "2", "--warmup", "2", "--batch-size", "4",
                 "--output", str(out), "--markdown", str(tmp_path / "BENCHMARKS.md"), "--profile-examples", "3",
                 "--plain", "", "--no-progress"]) == 0  # the plain recipes: test_bench_times_the_plain_recipes_beside_ours
    report = json.loads(out.read_text())
    for key in ("layer_speedup", "wall_speedup_b1", "ort_wall_speedup_b1", "ort_early_vs_eager_full_b1",
                "throughput_speedup_b4", "flops_speedup"):
        assert report[key] > 0, key
    names = {f"{r}_{m}" for r in RUNNERS for m in ("full", "early")}
    assert set(report["variants"]) == names
    v = report["variants"]
    assert v["eager_early"]["exit_counts"] == v["ort_early"]["exit_counts"]
    assert v["eager_full"]["score"] == v["ort_full"]["score"]
    assert "calibrated per runner" in report["policy_source"]
    assert "| eager_early |" in capsys.readouterr().out
    rows = report["rows"]
    assert {(r["runner"], r["mode"], r["batch_size"]) for r in rows} == {
        (r, m, b) for r in RUNNERS for m in ("full", "early") for b in (1, 4)}
    for row in rows:
        assert row["mean_ms"] > 0 and row["artifact_mb"] > 0 and row["peak_rss_mb"] > 0
        assert (row["layer_speedup"] is None) == (row["mode"] == "full")
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {"ORT", "eager", "ort", "ort-int8", "eager-int8"}
    assert set(report["per_exit"]) == {"eager", "eager-int8", "ort", "ort-int8"}  # the single files answer one exit
    assert v["ort-int8-single_early"]["exit_counts"] == v["ort-int8_early"]["exit_counts"]  # the same exits, one call
    assert any(t["target"].startswith("ORT INT8 single file early vs ORT INT8 per-layer early") for t in report["targets"])
    assert report["profile"]["ort-int8"]["fused_early_exit_call_us"] > 0
    assert report["profile"]["ort"]["fused_never_exit_call_us"] > 0 and "fused_cost_per_exit_us" in report["profile"]["ort"]
    split = report["profile"]["ort-int8"]  # an exit's cost inside the fused graph: head + test + If
    assert split["unrolled_heads_call_us"] > 0 and split["unrolled_heads_tests_call_us"] > 0
    assert abs(split["exit_head_in_graph_us"] + split["exit_test_in_graph_us"] + split["control_flow_per_exit_us"]
               - split["fused_cost_per_exit_us"]) < 1e-6
    assert report["profile"]["eager"]["early_exit_us"] > 0 and report["profile"]["eager-int8"]["exit_head_us"] > 0
    assert report["profile"]["eager"]["never_exit_us"] > 0 and "loop_cost_per_exit_us" in report["profile"]["eager-int8"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Targets" in page and "| ort-int8 | early | 1 |" in page and str(tmp_path) not in page
    assert "## Batch 1: layer speed-up, its wall-clock ceiling" in page and "## Profile: eager at batch 1" in page
    assert "| each exit inside the fused graph (never exit - full graph call, / 2) |" in page
    assert "| of each exit: its If (fused never exit - with tests, / exits) |" in page
    per_row = report["rows_profile"]["eager-int8"]  # a layer step per row as rows leave a batch of 4
    assert per_row["rows"] == [4, 2, 1] and per_row["vs_full_batch"][0] == 1.0 and min(per_row["per_row_us"]) > 0
    assert set(report["rows_profile"]) == {"eager", "eager-int8", "ort", "ort-int8"}
    assert "## Batch 4: what a layer costs per row as rows leave" in page
    assert "| each exit inside the loop (never exit - full model, / 2) |" in page
    # one layer's kernels by what they compute, beside the machine's bound
    layer = report["layer_profile"]["ort-int8"]
    assert "QAttention" in layer["ops"] and layer["kernel_us"]["attention (QKV projection, scores, context)"] > 0
    assert layer["kernel_us"]["exit head"] > 0 and layer["unprofiled_call_us"] > 0
    bound = layer["bound"]
    assert bound["bound_us"] == max(bound["memory_us"], bound["compute_us"]) > 0
    assert "## ort-int8: where one layer's time goes, against the machine's limit (batch 1)" in page


def test_curves_command(tmp_path, capsys):
    ckpt, dev = train_tiny(tmp_path)
    out = tmp_path / "curves.json"
    assert main(["curves", "--checkpoint", str(ckpt), "--task", "custom", "--dev-file", str(dev),
                 "--measure-points", "2", "--measure-examples", "4", "--output", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report["curves"]) == set(POLICIES)
    assert set(report["measured"]) == set(POLICIES)
    for name, m in report["measured"].items():
        assert len(m["speedup"]) == 2 and all(s > 0 for s in m["speedup"])
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| entropy |" in capsys.readouterr().out


def test_interpolated_score_at_speedup():
    from metabert.bench.curves import at_speedup
    from metabert.eval.reports import ExitRun

    rows = [ExitRun("entropy", 0.1, 2, {"score": score}, 6 / speedup, speedup, (0,) * 6)
            for speedup, score in [(1.0, 90.0), (2.0, 80.0), (3.0, 60.0)]]
    assert at_speedup(rows, 1.5) == pytest.approx(85.0)
    assert at_speedup(rows, 2.5) == pytest.approx(70.0)
    assert at_speedup(rows, 4.0) is None


def test_bench_calibrates_each_runner_with_the_guarantee_unless_told(tmp_path):
    """``--max-drop`` in bench chooses γ as `metabert calibrate` stores it (risk-controlled at
    ``--confidence``); ``--no-guarantee`` takes the point estimate."""
    from metabert.data.batching import encode
    from metabert.eval.calibrate import calibration_set, choose, guaranteed_record
    from metabert.bench.run import BenchOptions, pick_policy
    from metabert.model.multi_exit import MultiExitBert
    from metabert.engine.dataset import runner_logits as all_exit_logits

    ckpt, _ = train_tiny(tmp_path, "--calibration-fraction", "0.25")
    model = MultiExitBert.from_pretrained(ckpt).eval()
    data, what = calibration_set(model)
    held = (encode(data, model.tokenizer, 64), what)
    runner = EagerRunner(model)
    logits = all_exit_logits(runner, held[0], model.tokenizer.pad_token_id)
    options = BenchOptions(policy="max-prob", max_drop=30.0, confidence=0.9)
    policy, source, note = pick_policy(model, runner, options, held)
    record = guaranteed_record(logits, held[0].labels, "accuracy", "max-prob", 2, max_drop=30.0, delta=0.1)
    assert policy.threshold == record["threshold"] and "confidence 0.9" in source
    options = BenchOptions(policy="max-prob", max_drop=30.0, confidence=0.9, no_guarantee=True)
    policy, source, _ = pick_policy(model, runner, options, held)
    assert policy.threshold == choose(logits, held[0].labels, "accuracy", "max-prob", max_drop=30.0)["policy"].threshold
    assert "no guarantee" in source


@pytest.mark.parametrize("interleave", ["block", "example"])
def test_batch1_latencies_time_every_example_of_every_variant(interleave):
    from metabert.data.batching import pad_all, tokenize
    from metabert.bench.timing import Variant, batch1_latencies

    model = make_tiny(("a", "b")).eval()
    singles = [pad_all(tokenize(model.tokenizer, [t], None, 64).encoded, model.tokenizer.pad_token_id) for t in TEXTS[:5]]
    runner = EagerRunner(model)
    group = [Variant(runner, None), Variant(runner, POLICIES["entropy"](0.5))]
    times, outputs = batch1_latencies(group, singles, repeats=3, warmup=1, interleave=interleave)
    assert set(times) == {"eager_full", "eager_early"}
    assert all(t.shape == (3, 5) and (t > 0).all() for t in times.values())
    assert all(len(o) == 5 and all(x is not None for x in o) for o in outputs.values())
    with pytest.raises(ValueError, match="interleave"):
        batch1_latencies(group, singles, repeats=1, warmup=0, interleave="sometimes")


def test_bench_times_the_plain_recipes_beside_ours(tmp_path):
    """The plain full-model recipes a user would pick, each with its score, timed interleaved with
    metabert's rows of the same library, and every early path against the fastest of them."""
    ckpt, dev = train_tiny(tmp_path, "--calibration-fraction", "0.25")
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(ckpt), "--task", "custom", "--dev-file", str(dev), "--runners",
                 "eager,ort-int8", "--plain", "plain-ort-int8,plain-ort-opt-int8,plain-torch-int8", "--threshold", "0.5",
                 "--repeats", "2", "--warmup", "2", "--batch-size", "4", "--output", str(out), "--markdown",
                 str(tmp_path / "BENCHMARKS.md"), "--profile-examples", "0", "--no-memory", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    v = report["variants"]
    for name in ("plain-ort-int8_full", "plain-ort-opt-int8_full", "plain-torch-int8_full"):
        assert v[name]["plain"] and v[name]["mode"] == "full" and 0 <= v[name]["score"] <= 100
    assert not v["ort-int8_early"]["plain"] and v["plain-ort-int8_full"]["backend"] == "onnxruntime"
    assert report["fastest_plain_b1"] in v and report["vs_fastest_plain_b1"]["ort-int8_early"] > 0
    assert any("fastest plain recipe" in t["target"] for t in report["targets"])
    page = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Against the plain recipes a deploying user would pick" in page and "| plain-torch-int8_full |" in page
