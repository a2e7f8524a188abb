"""The single early-exit file (``metabert.deploy.single_file``, ``early_exit.onnx``) answers as the
engine does, outside metabert: run by plain ``onnxruntime`` in a process that never imports
metabert (``tests/single_file_client.py``) and by ``onnxruntime-node`` (``tests/node/early_exit.js``).

For every exit rule, at several thresholds (patience values), fp32 and INT8, batched with mixed
lengths, padded to a fixed length and at batch 1, the file's exits must equal those of
``metabert.engine.loop.run`` over ``OrtMultiExit`` of the same folder, and its logits theirs. INT8 logits
depend on the batch (activation ranges per call), so batches are the engine's own, and thresholds are
placed in the widest gaps between the statistics of every row at every exit (``policies``): a row
whose statistic sat on γ would flip by the last bit of a kernel, not by a bug.
"""

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import diversify, make_tiny

pytest.importorskip("onnxruntime")

from metabert.engine import loop as engine  # noqa: E402
from metabert.engine.loop import every_exit  # noqa: E402
from metabert.bench.profile import stepped  # noqa: E402  (the reference: layer by layer)
from metabert.data.batching import collate, eval_batches, pad_all, tokenize  # noqa: E402
from metabert.cli import main  # noqa: E402
from metabert.deploy import single_file  # noqa: E402
from metabert.engine.policies import POLICIES, ThresholdPolicy, entropy, get_policy, simulate_exits  # noqa: E402
from metabert.deploy.onnx_export import export  # noqa: E402
from metabert.deploy.ort_runner import OrtMultiExit  # noqa: E402
from metabert.deploy.quantize import quantize_export  # noqa: E402

HERE = Path(__file__).parent
CLIENT = HERE / "single_file_client.py"
NODE_DIR = HERE / "node"
TEXTS = ["good", "bad film", "a long and winding review of a film that was neither good nor bad",
         "truly awful", "wonderful", "meh , it was fine i guess", "the best", "not the best",
         "an utterly forgettable , overlong and joyless exercise in style", "fine", "i laughed , i cried",
         "two hours of my life i will not get back"]
LABELS = ("neg", "pos", "mixed")
FIXED_LENGTH = 40  # a client that pads every batch to one length
# |file - engine| of the logits of the exit taken: fp32 absolute; INT8 x the largest |logit|. A plain
# client's session keeps ONNX Runtime's default fusions, which our runner's sessions leave out
# (fused_layers.SLOW_FUSIONS: Add + LayerNormalization into SkipLayerNormalization): other kernels, so
# INT8 logits move by up to ~1e-3 of their scale (measured 9.3e-4 here); fp32 stays within 1e-5. A
# row answered at another exit is off by ~100%; the exits themselves must be the engine's.
LOGIT_TOL = {"fp32": 1e-5, "int8": 2e-3}


@pytest.fixture(scope="module")
def model():
    return diversify(make_tiny(LABELS, seed=5), seed=0, scale=1.0).eval()  # exits from unsure to sure


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(model, checkpoint, tmp_path_factory):
    fp32 = export(model, checkpoint, tmp_path_factory.mktemp("onnx"))
    return {"fp32": fp32, "int8": quantize_export(fp32, tmp_path_factory.mktemp("onnx-int8"))}


@pytest.fixture(scope="module")
def runners(folders):
    return {precision: OrtMultiExit(folder) for precision, folder in folders.items()}


def encoded(model):
    return tokenize(model.tokenizer, TEXTS, None, 64).encoded


def policies(runner, inputs, name: str, count: int = 3) -> list:
    """Up to ``count`` settings of rule ``name`` under which this batch leaves at more than one exit;
    thresholds in the middle of the widest gaps between the statistics of every row at every exit
    (patience-entropy: entropies, at t=2), so that no row's statistic sits near γ."""
    logits = every_exit(runner, inputs)
    cls = POLICIES[name]
    if cls.parameter == "patience":
        settings = [get_policy(name, patience=t) for t in range(1, runner.num_layers + 1)]
    else:
        values = (cls.statistic if issubclass(cls, ThresholdPolicy) else entropy)(logits[:-1]).flatten()
        values = values.sort().values.tolist()
        gaps = sorted(itertools.pairwise(values), key=lambda pair: pair[0] - pair[1])  # widest first
        settings = [get_policy(name, threshold=(lo + hi) / 2, patience=2) for lo, hi in gaps]
    found = [p for p in settings if len(set(simulate_exits(logits, p).tolist())) > 1][:count]
    assert found, f"no {name} setting gives a mix of exit layers: the test would prove nothing"
    return found


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_runners_batched_one_call_path_takes_the_stepped_engines_exits(model, runners, precision):
    """``OrtMultiExit.early_exit_many`` (the engine's path for several rows: this folder's single-file
    graph built in memory) leaves each row where the layer-by-layer engine does, with its logits,
    for every rule; one row, or ``fused=False``, declines."""
    runner = runners[precision]
    inputs = pad_all(encoded(model), model.tokenizer.pad_token_id)
    for name in POLICIES:
        for policy in policies(runner, inputs, name, count=2):
            want = stepped(runner, inputs, policy)
            got = runner.early_exit_many(inputs, policy)
            assert got is not None and torch.equal(got.exit_layer, want.exit_layer), (name, policy.describe())
            scale = 1.0 if precision == "fp32" else float(want.logits.abs().max())
            assert float((got.logits - want.logits).abs().max()) <= LOGIT_TOL["fp32"] * scale
            assert engine.run(runner, inputs, policy).exit_layer.tolist() == want.exit_layer.tolist()
    one = {k: v[:1] for k, v in inputs.items()}
    assert runner.early_exit_many(one, policy) is None
    runner.fused = False
    try:
        assert runner.early_exit_many(inputs, policy) is None
    finally:
        runner.fused = True


def batch_job(inputs, index=None) -> dict:
    size = inputs["input_ids"].shape[0]
    job = {"index": list(range(size)) if index is None else [int(i) for i in index]}
    job.update({k: v.tolist() for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return job


def run_client(command: list[str], job: dict, tmp_path: Path) -> dict:
    path = tmp_path / f"job-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(job))
    done = subprocess.run(command + [str(path)], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def python_client() -> list[str]:
    return [sys.executable, str(CLIENT)]


def node_client() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the onnxruntime-node check needs Node.js (and `npm ci` in tests/node)")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("tests/node has no node_modules: run `npm ci --ignore-scripts` in tests/node "
                    "(`make test` does it)")
    return [node, str(NODE_DIR / "early_exit.js")]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_plain_onnxruntime_takes_the_engines_exits(model, folders, runners, precision, tmp_path):
    """Every rule, several γ (t), through the file's stored default and through its inputs; one
    batch of mixed lengths padded to its longest row (as the engine gets it), the same padded to a
    fixed length (the graph cuts the padding columns first: the same answers), and each row alone;
    the file with and without its own batch-1 path."""
    runner = runners[precision]
    data = encoded(model)
    pad = model.tokenizer.pad_token_id
    inputs = pad_all(data, pad)
    fixed = {k: torch.nn.functional.pad(v, (0, FIXED_LENGTH - v.shape[1]), value=pad if k == "input_ids" else 0)
             for k, v in inputs.items()}
    alone = [pad_all(tokenize(model.tokenizer, [t], None, 64).encoded, pad) for t in TEXTS]
    checked = []
    for name in POLICIES:
        chosen = policies(runner, inputs, name)
        paths = [single_file.write(folders[precision], tmp_path / f"{name}.onnx", policy=chosen[0]),
                 single_file.write(folders[precision], tmp_path / f"{name}-no-b1.onnx", policy=chosen[0],
                                   batch_one=False)]  # batches of one row through the batched path too
        runs, expected = [], []
        for k, policy in enumerate(chosen):
            feed = {"threshold": policy.threshold if policy.parameter == "threshold" and k else None,
                    "patience": policy.patience if name.startswith("patience") and k else None}
            batched = stepped(runner, inputs, policy)
            runs.append({**feed, "batches": [batch_job(inputs)]})
            runs.append({**feed, "batches": [batch_job(fixed)]})
            expected += [batched, batched]
            singles = [engine.run(runner, one, policy) for one in alone]
            runs.append({**feed, "batches": [batch_job(one, [i]) for i, one in enumerate(alone)]})
            expected.append(engine.ExitResult(torch.cat([s.logits for s in singles]),
                                              torch.cat([s.exit_layer for s in singles])))
        for path in paths:
            answer = run_client(python_client(), {"model": str(path), "labels": list(LABELS), "runs": runs}, tmp_path)
            assert answer["runtime"].startswith("onnxruntime ")
            for run, want in zip(answer["runs"], expected):
                assert run["exit_layer"] == want.exit_layer.tolist(), (name, path.name, run)
                got = torch.tensor(run["logits"])
                scale = 1.0 if precision == "fp32" else float(want.logits.abs().max())
                assert float((got - want.logits).abs().max()) <= LOGIT_TOL[precision] * scale
                assert run["labels"] == [LABELS[i] for i in want.predictions.tolist()]
        checked.append((name, [p.describe() for p in chosen]))
    # the checks had something to find: early and late exits, and every rule
    assert {n for n, _ in checked} == set(POLICIES)


def test_file_metadata_and_interface(model, folders, checkpoint, tmp_path):
    """What the file says about itself, its inputs and outputs, and standard operators only."""
    import onnx

    stored = {"name": "max-prob", "threshold": 0.61, "patience": 2, "runner": "ort-int8", "goal": "a goal",
              "chosen_on": "held-out slice", "calibration_layer_speedup": 1.7,
              "promise": {"kind": "max_drop", "max_drop": 1.0, "delta": 0.1}}
    folder, ckpt = tmp_path / "int8", tmp_path / "ckpt"
    shutil.copytree(folders["int8"], folder)
    shutil.copytree(checkpoint, ckpt)
    config_file = ckpt / "metabert_config.json"  # calibrated after the export: the checkpoint has the record
    config = json.loads(config_file.read_text())
    config["exit_policy"] = {"name": "entropy", "threshold": 0.2, "runners": {"ort-int8": stored}}
    config_file.write_text(json.dumps(config))
    (ckpt / "train_config.json").write_text(json.dumps({"max_seq_length": 96}))
    without = single_file.read_metadata(single_file.write(folder, tmp_path / "folder-only.onnx"))
    assert without["calibrated"] == "false" and float(without["threshold"]) == 0.0  # uncalibrated: full model
    assert without["max_length"] == "128"
    path = single_file.write(folder, checkpoint=ckpt)
    assert path == folder / single_file.FILE_NAME
    props = single_file.read_metadata(path)
    assert json.loads(props["labels"]) == list(LABELS)
    assert (props["policy"], float(props["threshold"])) == ("max-prob", 0.61)  # the ort-int8 record, not eager's
    assert props["precision"] == "int8" and props["runner"] == "ort-int8"
    assert props["calibration_goal"] == "a goal" and json.loads(props["calibration_promise"]) == stored["promise"]
    assert props["tokenizer"] == "sentence-transformers/all-MiniLM-L6-v2" and props["max_length"] == "96"
    assert props["metabert_version"] and props["format"] == single_file.FORMAT
    assert "/tmp" not in json.dumps(props) and str(tmp_path) not in json.dumps(props)
    proto = onnx.load(str(path))
    # the layers' fused attention (metabert.deploy.fused_layers) is ONNX Runtime's, and the file says so
    assert props["contrib_ops"] == "com.microsoft:Gelu, com.microsoft:QAttention" == ", ".join(single_file.contrib_ops(proto))
    initializers = {i.name: i for i in proto.graph.initializer}
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask", "token_type_ids", "threshold"]
    assert onnx.numpy_helper.to_array(initializers["threshold"]).item() == pytest.approx(0.61)
    assert [o.name for o in proto.graph.output] == ["logits", "exit_layer", "probabilities"]
    # an explicit policy wins over the stored record
    path = single_file.write(folder, tmp_path / "p.onnx", name="patience", patience=3)
    props = single_file.read_metadata(path)
    assert (props["policy"], props["patience"], json.loads(props["policy_inputs"])) == ("patience", "3", ["patience"])
    assert props["calibrated"] == "false"


def profiled_session(path, prefix: Path):
    """A session of ``path`` that profiles every node, with the file's node names (no optimisation)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.use_per_session_threads = False  # this process has OrtMultiExit's shared pool
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def node_shapes(session) -> dict[str, list]:
    """{layer prefix ("l1", ...): the input shapes its nodes ran with} from the session's profile."""
    shapes: dict[str, list] = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].startswith("l"):
            layer = event["name"].split("/")[0]
            for item in event.get("args", {}).get("input_type_shape", []):
                shapes.setdefault(layer, []).extend(item.values())
    return shapes


def test_later_layers_run_only_on_the_rows_that_stay_without_their_padding(model, folders, runners, tmp_path):
    """The longest row leaves at exit 1: layer 2 runs on the other rows alone, cut to their own
    longest length; a batch padded to a fixed length starts cut to its longest row; where every
    row leaves at exit 1, layers 2.. do not run at all; a batch of one row runs the batch-1 chain,
    none of the row bookkeeping. (ONNX Runtime's profile of each call.)"""
    data = encoded(model)
    pad = model.tokenizer.pad_token_id
    lengths = [len(ids) for ids in data.input_ids]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    inputs = pad_all(data, pad)
    first = every_exit(runners["fp32"], inputs)[0].softmax(-1).amax(-1)  # max-prob at exit 1
    others = [i for i in range(len(lengths)) if first[i] < first[longest] - 0.01 and lengths[i] < lengths[longest]]
    assert others, "no row stays while the longest leaves: pick other texts"
    rows = [longest] + others
    gamma = float(first[longest] + first[others].max()) / 2
    path = single_file.write(folders["fp32"], tmp_path / "mp.onnx", policy=get_policy("max-prob", gamma))
    batch = {k: v[rows] for k, v in inputs.items()}
    session = profiled_session(path, tmp_path / "trim")
    layers = session.run(["exit_layer"], {k: v.numpy() for k, v in batch.items()})[0]
    assert layers[0] == 1 and (layers[1:] > 1).all()
    shapes = node_shapes(session)
    hidden = model.encoder.config.hidden_size
    staying = max(lengths[i] for i in others)
    assert [len(rows), lengths[longest], hidden] in shapes["l1"]
    assert [len(others), staying, hidden] in shapes["l2"]
    assert not any(s[:2] == [len(others), lengths[longest]] for s in shapes["l2"] if len(s) == 3)

    fixed = {k: torch.nn.functional.pad(v, (0, FIXED_LENGTH - v.shape[1]), value=pad if k == "input_ids" else 0)
             for k, v in inputs.items()}
    everyone = single_file.write(folders["fp32"], tmp_path / "all.onnx", policy=get_policy("max-prob", 0.0))
    session = profiled_session(everyone, tmp_path / "fixed")
    layers = session.run(["exit_layer"], {k: v.numpy() for k, v in fixed.items()})[0]
    assert (layers == 1).all()
    shapes = node_shapes(session)
    assert [len(lengths), max(lengths), hidden] in shapes["l1"]
    assert not any(FIXED_LENGTH in s for s in shapes["l1"])
    assert set(shapes) == {"l1"}  # layers 2 and 3 never ran

    session = profiled_session(everyone, tmp_path / "one")  # a batch of one row takes its own path
    session.run(["exit_layer"], {k: v[:1].numpy() for k, v in inputs.items()})
    ran = {e["name"].split("/")[0] for e in json.loads(Path(session.end_profiling()).read_text())
           if e.get("cat") == "Node"}
    assert "o1" in ran and not any(n.startswith(("l1", "l2", "s1", "r1")) for n in ran), sorted(ran)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_node_answers_as_metabert_predict(model, folders, checkpoint, precision, tmp_path):
    """``onnxruntime-node`` on the file, fed the batches ``metabert predict`` makes (pre-tokenised,
    length-sorted, written here as JSON), gives predict's labels and exit layers, at two γ.
    onnxruntime-node feeds only ``session.inputNames``, which leave out overridable initializers
    such as ``threshold``: each γ is a file of its own, and the client refuses to pretend it fed one."""
    command = node_client()
    runner = OrtMultiExit(folders[precision])
    data = encoded(model)
    pad = model.tokenizer.pad_token_id
    chosen = policies(runner, pad_all(data, pad), "entropy", count=2)
    assert len(chosen) == 2
    batch_size = 5  # predict's batches: length-sorted groups of --batch-size
    batches = [batch_job(collate(data, index, pad), index) for index in eval_batches(data, batch_size)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    layers_seen = set()
    for k, policy in enumerate(chosen):
        out = tmp_path / f"predicted-{k}.jsonl"
        assert main(["predict", "--checkpoint", str(checkpoint), "--onnx", str(folders[precision]),
                     "--input", str(source), "--output", str(out), "--policy", "entropy",
                     "--threshold", repr(policy.threshold), "--batch-size", str(batch_size), "--no-progress"]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        path = single_file.write(folders[precision], tmp_path / f"early_exit-{k}.onnx", policy=policy)
        answer = run_client(command, {"model": str(path), "labels": list(LABELS),
                                      "runs": [{"threshold": None, "batches": batches}]}, tmp_path)
        assert answer["runtime"] == "onnxruntime-node 1.31.1"
        run = answer["runs"][0]
        assert run["exit_layer"] == [r["exit_layer"] for r in rows]
        assert run["labels"] == [r["label"] for r in rows]
        layers_seen |= set(run["exit_layer"])
    assert len(layers_seen) > 1  # a mix of exits: the check had something to find
    job = tmp_path / "override.json"
    job.write_text(json.dumps({"model": str(path), "labels": list(LABELS),
                               "runs": [{"threshold": 0.5, "batches": batches}]}))
    done = subprocess.run(command + [str(job)], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "overridable initializer" in done.stderr


def test_triton_repository(folders, tmp_path):
    """The layout and config Triton's ONNX Runtime backend reads (no Triton server runs here: the
    config's content is checked, not served)."""
    path = single_file.write(folders["fp32"], tmp_path / "early_exit.onnx", policy=get_policy("entropy", 0.3))
    root = single_file.write_triton(path, tmp_path / "repo", name="sst2_early_exit", max_batch_size=16)
    assert root == tmp_path / "repo" / "sst2_early_exit"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert (root / "1" / "model.onnx").read_bytes() == path.read_bytes()
    assert (root / "labels.txt").read_text().splitlines() == list(LABELS)
    config = (root / "config.pbtxt").read_text()
    assert 'name: "sst2_early_exit"' in config and 'backend: "onnxruntime"' in config
    assert "max_batch_size: 16" in config and "dynamic_batching {" in config
    blocks = config.split("output [")
    inputs, outputs = blocks[0], blocks[1]
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert f'name: "{name}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]' in inputs
    assert "threshold" not in inputs  # an overridable initializer: Triton feeds those only without batching
    assert f'name: "logits"\n    data_type: TYPE_FP32\n    dims: [ {len(LABELS)} ]' in outputs
    assert 'label_filename: "labels.txt"' in outputs
    assert 'name: "exit_layer"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n    reshape: { shape: [ ] }' in outputs
    assert config.count("{") == config.count("}") and config.count("[") == config.count("]")
    with pytest.raises(ValueError, match="one path component"):
        single_file.write_triton(path, tmp_path / "repo", name="a/b")


def test_export_command_writes_the_single_file_and_triton_repository(checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out), "--single-file",
                 "--triton", str(tmp_path / "triton"), "--policy", "norm-entropy", "--threshold", "0.4",
                 "--no-batch-one-path"]) == 0
    printed = capsys.readouterr().out
    assert (out / single_file.FILE_NAME).is_file() and "early_exit.onnx" in printed
    props = single_file.read_metadata(out / single_file.FILE_NAME)
    assert (props["policy"], float(props["threshold"]), props["precision"]) == ("norm-entropy", 0.4, "fp32")
    assert props["batch_one_path"] == "false"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out), "--threshold", "0.4"]) == 2
    assert "add --single-file" in capsys.readouterr().err
    assert (tmp_path / "triton" / "metabert_early_exit" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_single_file_runner_takes_its_folders_runners_exits(model, folders, runners, checkpoint, precision):
    """``ort-single`` / ``ort-int8-single`` (``load_runner``): the engine over the single file's runner
    takes the exits the engine takes over the per-layer runner of its folder, batched, for the file's
    rule at several γ; its full model is the folder's full model; the calibrated γ of the folder's
    runner answers for it."""
    from metabert.deploy.runners import load_runner

    name = "ort" if precision == "fp32" else "ort-int8"
    single = load_runner(f"{name}-single", model, folders[precision], checkpoint)
    assert single.name == f"{name}-single"
    inputs = pad_all(encoded(model), model.tokenizer.pad_token_id)
    for policy in policies(runners[precision], inputs, "entropy"):
        want, got = engine.run(runners[precision], inputs, policy), engine.run(single, inputs, policy)
        assert torch.equal(got.exit_layer, want.exit_layer), policy
    torch.testing.assert_close(engine.run_full(single, inputs).logits, engine.run_full(runners[precision], inputs).logits,
                               rtol=0, atol=1e-4 if precision == "int8" else 1e-5)
    with pytest.raises(ValueError, match="decides by entropy, not max-prob"):
        engine.run(single, inputs, get_policy("max-prob", 0.5))
    with pytest.raises(ValueError, match="calibrate and score every exit with the"):
        single.start(inputs)


def test_the_server_answers_with_the_single_file(model, folders, checkpoint):
    from fastapi.testclient import TestClient

    from metabert.deploy.runners import load_runner
    from metabert.deploy.server.app import create_app

    runner = load_runner("ort-int8-single", model, folders["int8"], checkpoint)
    with TestClient(create_app(model, runner=runner, threshold=0.5)) as client:
        answer = client.post("/predict", json={"texts": TEXTS[:5]})
    assert answer.status_code == 200
    items = answer.json()["results"]
    assert len(items) == 5 and all(1 <= item["exit_layer"] <= model.num_layers for item in items)


def test_torch_layers_give_a_file_of_standard_operators(model, checkpoint, tmp_path):
    """``export(layers="torch")``: no ONNX Runtime contrib operator anywhere in the file."""
    import onnx

    folder = export(model, checkpoint, tmp_path / "torch", layers="torch")
    path = single_file.write(folder, checkpoint=checkpoint)
    proto = onnx.load(str(path))
    assert single_file.read_metadata(path)["contrib_ops"] == "none" and single_file.contrib_ops(proto) == []
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
