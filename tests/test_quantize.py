"""INT8 runners (ONNX Runtime and eager), the quantized export, and per-runner calibrated policies."""

import json

import pytest
import torch

from conftest import diversify, make_tiny
from metabert.engine import loop as engine
from metabert.cli import main
from metabert.model.multi_exit import MultiExitBert
from metabert.engine.resolve import record_for, resolve, resolve_name, store_record
from metabert.deploy.runners import EagerInt8Runner, load_runner
from test_cli import train_tiny

pytest.importorskip("onnxruntime")
from metabert.deploy.onnx_export import export  # noqa: E402
from metabert.deploy.ort_runner import OrtMultiExit  # noqa: E402
from metabert.deploy.quantize import QuantizeConfig, quantize_export  # noqa: E402

TEXTS = ["good", "bad film", "a long and winding review of a film that was neither good nor bad", "meh"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    model = diversify(make_tiny(("neg", "pos"), seed=3), seed=1).eval()
    fp32 = export(model, None, tmp_path_factory.mktemp("fp32"))
    return model, fp32, quantize_export(fp32, tmp_path_factory.mktemp("int8"))


def folder_bytes(folder):
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".onnx")


def test_quantized_export_is_int8_smaller_and_close(folders):
    model, fp32, int8 = folders
    meta = json.loads((int8 / "onnx_meta.json").read_text())
    assert meta["precision"] == "int8" and meta["quantization"]["method"] == "dynamic"
    assert folder_bytes(int8) < 0.5 * folder_bytes(fp32)
    runtime = OrtMultiExit(int8)
    assert runtime.name == "ort-int8" and OrtMultiExit(fp32).name == "ort"
    enc = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    ref = engine.run_full(OrtMultiExit(fp32), enc).logits
    got = engine.run_full(runtime, enc).logits
    assert not torch.equal(ref, got)  # quantized for real
    assert (ref - got).abs().max() < 0.25 * ref.abs().max()  # and still the same model


def test_static_quantization_needs_and_uses_calibration_inputs(folders, tmp_path):
    model, fp32, _ = folders
    with pytest.raises(ValueError, match="calibration"):
        quantize_export(fp32, tmp_path / "a", QuantizeConfig(method="static"))
    batches = [dict(model.tokenizer([t], return_tensors="pt")) for t in TEXTS]
    out = quantize_export(fp32, tmp_path / "b", QuantizeConfig(method="static"), batches)
    assert OrtMultiExit(out).name == "ort-int8"
    with pytest.raises(ValueError, match="already int8"):
        quantize_export(out, tmp_path / "c")


def test_eager_int8_quantizes_the_encoder_not_the_heads(folders):
    model = folders[0]
    runner = EagerInt8Runner(model)
    assert runner.name == "eager-int8" and runner.model is not model
    def plain_linears(module):
        return sum(type(m) is torch.nn.Linear for m in module.modules())

    assert plain_linears(runner.model.encoder) == 0  # every encoder Linear is quantized
    assert plain_linears(model.encoder) > 0  # in a copy: the fp32 model is untouched
    assert all(type(head.classifier) is torch.nn.Linear for head in runner.model.exits)  # heads stay fp32


def test_load_runner_checks_the_folder(folders):
    model, fp32, int8 = folders
    assert load_runner(None, model, int8).name == "ort-int8"
    assert load_runner(None, model).name == "eager"
    with pytest.raises(ValueError, match="export for ort, not ort-int8"):
        load_runner("ort-int8", model, fp32)
    with pytest.raises(ValueError, match="unknown runner"):
        load_runner("tpu", model)
    with pytest.raises(ValueError, match="--onnx is for the ort runners"):
        load_runner("eager-int8", model, int8)


def test_one_calibrated_record_per_runner(caplog):
    eager = {"name": "entropy", "threshold": 0.3, "patience": 2, "runner": "eager"}
    int8 = {"name": "entropy", "threshold": 0.1, "patience": 2, "runner": "ort-int8"}
    stored = store_record(store_record({}, "eager", eager), "ort-int8", int8)
    assert stored["threshold"] == 0.3 and stored["runners"]["ort-int8"]["threshold"] == 0.1
    assert store_record(stored, "eager", {**eager, "threshold": 0.4})["runners"] == stored["runners"]
    assert resolve(stored=stored).policy.threshold == 0.3
    assert resolve(stored=stored, runner="ort-int8").policy.threshold == 0.1
    assert "calibrated for ort-int8" in resolve(stored=stored, runner="ort-int8").source
    assert resolve(stored=stored, runner="ort").policy.threshold == 0.3  # fp32: the eager logits
    assert record_for(stored, "ort")[1].startswith("chosen with eager logits")
    assert resolve_name(None, None, stored, "ort-int8")[2]["threshold"] == 0.1
    with caplog.at_level("WARNING"):
        fallback = resolve(stored=stored, runner="eager-int8")
    assert fallback.policy.threshold == 0.3 and "fp32 logits, not eager-int8's" in fallback.source
    assert "calibrate --runner eager-int8" in caplog.text
    old = {"name": "entropy", "threshold": 0.2, "patience": 2}  # a checkpoint from before per-runner records
    assert resolve(stored=old).policy.threshold == 0.2 and record_for(old, "eager") == (old, "")
    assert resolve(stored=store_record({}, "ort-int8", int8), runner="eager").default


def test_int8_export_calibrates_predicts_and_serves(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from metabert.deploy.server.app import create_app

    ckpt, dev = train_tiny(tmp_path, "--calibration-fraction", "0.25")
    eager = dict(MultiExitBert.from_pretrained(ckpt).config.exit_policy)  # train calibrated it
    out = tmp_path / "int8"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--quantize", "int8"]) == 0
    said = capsys.readouterr().out
    assert "calibrated for ort-int8" in said and f"--onnx {out}" in said
    auto = MultiExitBert.from_pretrained(ckpt).config.exit_policy["runners"]["ort-int8"]
    assert auto["runner"] == "ort-int8" and auto["promise"]["runner"] == "ort-int8"
    assert main(["calibrate", "--checkpoint", str(ckpt), "--onnx", str(out), "--target-speedup", "1.2",
                 "--no-progress"]) == 0
    assert "with ort-int8 logits" in capsys.readouterr().out
    model = MultiExitBert.from_pretrained(ckpt)
    record = model.config.exit_policy["runners"]["ort-int8"]
    assert record["runner"] == "ort-int8" and record["calibration_layer_speedup"] >= 1.2
    assert {k: v for k, v in model.config.exit_policy.items() if k != "runners"} == eager  # eager untouched

    preds = tmp_path / "preds.jsonl"
    assert main(["predict", "--checkpoint", str(ckpt), "--onnx", str(out), "--input", str(dev),
                 "--output", str(preds), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "ort-int8, exit policy entropy" in err and "calibrated for ort-int8" in err
    assert len(preds.read_text().splitlines()) == len(dev.read_text().splitlines())

    app = create_app(model, runner=load_runner(None, model, out))
    with TestClient(app) as client:
        health = client.get("/healthz").json()
        assert health["policy"] == f"entropy (γ={record['threshold']:g})"
        body = client.post("/predict", json={"texts": ["a fine film", "awful"]}).json()
        assert [r["label"] in ("neg", "pos") for r in body["results"]] == [True, True]


def test_exports_made_for_a_run_are_removed_when_it_ends(tmp_path):
    """Runners exported on the fly (no --onnx) keep their folders in the temporary directory until
    the process exits; the fp32 graphs that only fed the quantizer go at once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import os, sys; sys.path.insert(0, sys.argv[1])\n"
        "from conftest import make_tiny\n"
        "from metabert.deploy.runners import load_runner\n"
        "model = make_tiny(('neg', 'pos')).eval()\n"
        "runners = [load_runner(name, model) for name in ('ort', 'ort-int8')]\n"
        "print(sorted(n.rsplit('-', 1)[0] for n in os.listdir(os.environ['TMPDIR']) if n.startswith('metabert')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)],
                          env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "['metabert-onnx', 'metabert-onnx-int8']"  # one folder per live runner
    assert [p for p in tmp_path.iterdir() if p.name.startswith("metabert")] == []  # torch leaves its own
