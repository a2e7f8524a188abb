"""ONNX export and the ONNX Runtime runners for every encoder family (``tests/test_backbones.py``'s
tiny random configs) and for a retrofitted tiny ``*ForSequenceClassification`` of each
(``tests/test_heads.py``'s, the family's own head as the last exit): every exit's logits match
PyTorch with padding in the batch, the engine's early exit over ``OrtMultiExit`` takes the exits it
takes over the eager runner (``tests/test_engine.py``'s contract, per family), INT8 runs and
predicts, and ``metabert export`` / ``predict --onnx`` / ``serve`` work on a DistilBERT checkpoint."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from metabert.cli import main
from metabert.data.batching import pad_all, tokenize
from metabert.engine import loop as engine
from metabert.engine.loop import every_exit
from metabert.engine.policies import POLICIES, ThresholdPolicy, entropy, simulate_exits
from metabert.eval.evaluate import candidate_policies
from metabert.model.multi_exit import EagerRunner, ExitHead, MultiExitBert
from test_backbones import FAMILIES, folders  # noqa: F401  (fixture: a tiny random model folder per family)
from test_heads import classifiers, library_logits, tokenizer  # noqa: F401  (fixtures: a tiny classifier per family)

pytest.importorskip("onnxruntime")
from metabert.deploy.onnx_export import META_NAME, check_export, export  # noqa: E402
from metabert.deploy.ort_runner import OrtMultiExit  # noqa: E402
from metabert.deploy.quantize import quantize_export  # noqa: E402

TEXTS = ["good", "bad film", "a long and winding review of a film that was neither good nor bad",
         "truly awful", "wonderful", "meh , it was fine i guess", "the best", "not the best"]
KINDS = ("base", "retrofit")
# what a family's layers read besides the hidden state (the embeddings graph's outputs after "hidden")
STATE = {
    "bert": {"mask", "pool"}, "roberta": {"mask", "pool"}, "xlm-roberta": {"mask", "pool"},
    "electra": {"mask", "pool"}, "distilbert": {"mask", "pool"},
    "deberta-v2": {"mask", "pool", "rows.input_mask", "shared.relative_pos", "shared.rel_embeddings"},
    "modernbert": {"pool", "rows.full_attention", "rows.sliding_attention", "shared.full_attention.0",
                   "shared.full_attention.1", "shared.sliding_attention.0", "shared.sliding_attention.1"},
}


def spread(model: MultiExitBert, scale: float) -> MultiExitBert:
    """Large random exit heads (not a classifier's own last head), so that a random backbone's
    exits disagree from sample to sample and layer to layer."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in model.exits:
            if isinstance(head, ExitHead):
                for linear in (head.dense, head.classifier):
                    linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def exports(folders, classifiers, tmp_path_factory):  # noqa: F811
    """(family, kind) -> (model, fp32 folder), exported once per module."""
    cache = {}

    def get(family, kind):
        if (family, kind) not in cache:
            if kind == "base":
                model = MultiExitBert.from_backbone(str(folders[family]), ["neg", "pos", "mixed"], seed=1)
            else:
                model = MultiExitBert.from_classifier(classifiers[family], seed=1)
            model = spread(model, 0.3)  # unsaturated heads: every threshold rule mixes exits
            cache[family, kind] = model, export(model, None, tmp_path_factory.mktemp(f"{family}-{kind}"))
        return cache[family, kind]

    return get


def encode(model, texts) -> dict:
    return pad_all(tokenize(model.tokenizer, texts, None, 64).encoded, model.tokenizer.pad_token_id)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_export_matches_pytorch(exports, classifiers, family, kind):  # noqa: F811
    model, folder = exports(family, kind)
    meta = json.loads((folder / META_NAME).read_text())
    assert meta["family"] == family and meta["format"] == 3
    assert set(meta["state"]) == STATE[family]
    assert meta["trim_padding"] == (STATE[family] == {"mask", "pool"})
    runtime = OrtMultiExit(folder)
    # every layer graph reads only what the embeddings graph gives (so the graphs compose into one)
    given = {o.name for o in runtime.embeddings.get_outputs()}
    assert all(names <= given for names in runtime._layer_inputs) and {"hidden"} <= given
    assert check_export(model, runtime) < 1e-4  # a padded batch of three lengths
    enc = encode(model, TEXTS)
    assert not enc["attention_mask"].all()
    with torch.inference_mode():
        every = model(**enc)
        full = model.full_logits(**enc)
    assert float((every_exit(runtime, enc) - every).abs().max()) < 1e-4
    assert float((runtime.full(enc) - full).abs().max()) < 1e-4
    one = encode(model, TEXTS[2:3])  # batch 1, no padding (eager's no-mask path)
    with torch.inference_mode():
        assert float((runtime.full(one) - model.full_logits(**one)).abs().max()) < 1e-4
    if kind == "retrofit":  # the last exit is the original classifier
        theirs = library_logits(classifiers[family], enc)
        assert float((every_exit(runtime, enc)[-1] - theirs).abs().max()) < 1e-4


def centred(logits: torch.Tensor, policy):
    """``policy`` with its threshold moved to the middle of the gap between the statistics of
    ``logits`` (L, B, C) on either side of it: ONNX Runtime's logits are PyTorch's to ~1e-6, and a
    threshold sitting on a statistic would flip that row by rounding, not by a bug."""
    if isinstance(policy, ThresholdPolicy):
        values = type(policy).statistic(logits).flatten()
    elif policy.name == "patience-entropy":
        values = entropy(logits).flatten()
    else:
        return policy
    below, above = values[values < policy.threshold], values[values >= policy.threshold]
    if not len(below) or not len(above):
        return policy
    return dataclasses.replace(policy, threshold=float(below.max() + above.min()) / 2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ort_early_exit_takes_the_eager_exits(exports, family, kind):
    """Every policy, batched (rows leave, the rest go on) and at batch 1 (the fused one-call graph
    for the threshold rules): the ORT runner takes the eager runner's exits (batched: the eager
    engine's; at batch 1: the simulator's over the eager runner's own batch-1 logits, which
    ``tests/test_engine.py`` shows the eager engine takes) and answers with the same logits."""
    model, folder = exports(family, kind)
    eager, ort = EagerRunner(model), OrtMultiExit(folder)
    inputs = encode(model, TEXTS)
    reference = every_exit(eager, inputs)
    assert float((every_exit(ort, inputs) - reference).abs().max()) < 1e-4
    alone = [encode(model, [text]) for text in TEXTS]
    alone_reference = [every_exit(eager, one) for one in alone]  # (L, 1, C) each
    rows = torch.arange(len(TEXTS))
    for name in sorted(POLICIES):
        policies = [centred(reference, p) for p in candidate_policies(reference, name)]
        mixed = [p for p in policies if len(set(simulate_exits(reference, p).tolist())) > 1]
        # the threshold rules must mix exits (rows leave mid-batch); the patience rules need the
        # predictions to change across rows and layers, which a random BERT-layout backbone may not
        # give (every text alike; tests/test_engine.py mixes them on its tiny BERT)
        assert mixed or not issubclass(POLICIES[name], ThresholdPolicy), \
            f"no {name} setting gives a mix of exit layers: the test would prove nothing"
        for policy in (mixed or policies)[:2]:
            expected = simulate_exits(reference, policy)
            got, theirs = engine.run(ort, inputs, policy), engine.run(eager, inputs, policy)
            assert torch.equal(theirs.exit_layer, expected) and torch.equal(got.exit_layer, expected)
            assert float((got.logits - reference[expected - 1, rows]).abs().max()) < 1e-4
            for i, (one, own) in enumerate(zip(alone, alone_reference)):
                fused = ort.early_exit_one(one, policy) is not None
                assert fused == (name in ("entropy", "norm-entropy", "max-prob"))  # the one-call graph
                got = engine.run(ort, one, policy)
                layer = int(simulate_exits(own, policy)[0])
                assert int(got.exit_layer[0]) == layer == int(expected[i])
                assert float((got.logits[0] - own[layer - 1, 0]).abs().max()) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_select_keeps_rows_and_cuts_padding_only_where_the_family_allows(exports, family):
    """When the longest row leaves: per-row arrays keep the rows still running, shared ones stay
    as they are; the trailing padding is cut where only masks are sized by the sequence (BERT
    layout, DistilBERT), as the eager runner cuts it; the next layer's logits are the untrimmed ones."""
    model, folder = exports(family, "base")
    ort = OrtMultiExit(folder)
    texts = [TEXTS[2], TEXTS[0], TEXTS[5]]  # the long review first
    inputs = encode(model, texts)
    state, _ = ort.step(0, ort.start(inputs))
    keep = torch.tensor([False, True, True])
    hidden, named = ort.select(state, keep)
    length = int(inputs["attention_mask"][1:].sum(1).max())
    trims = STATE[family] == {"mask", "pool"}
    assert hidden.shape[:2] == (2, length if trims else inputs["input_ids"].shape[1])
    eager_hidden, _ = EagerRunner(model).select(EagerRunner(model).step(0, EagerRunner(model).start(inputs))[0], keep)
    assert tuple(eager_hidden.shape) == hidden.shape
    for name, value in named.items():
        if ort.meta["state"][name]["rows"]:
            assert value.shape[0] == 2
        else:
            assert value is state[1][name]
    _, logits = ort.step(1, (hidden, named))
    _, untrimmed = ort.step(1, state)
    assert float((logits - untrimmed[keep]).abs().max()) < 1e-4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_runs_and_predicts(exports, family, kind, tmp_path):
    """``quantize_export`` of every family's graphs: INT8 kernels in the layers, the runner named
    ``ort-int8``, answers close to fp32 and mostly the same classes; its early exit takes the
    simulator's exits over its own logits at batch 1 (where nothing else shares the quantized tensors)."""
    import onnx

    model, fp32 = exports(family, kind)
    int8 = quantize_export(fp32, tmp_path / "int8")
    runtime = OrtMultiExit(int8)
    assert runtime.name == "ort-int8"
    ops = {node.op_type for node in onnx.load(str(int8 / "layer_1.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul"}
    inputs = encode(model, TEXTS)
    reference = engine.run_full(OrtMultiExit(fp32), inputs).logits
    got = engine.run_full(runtime, inputs).logits
    assert not torch.equal(got, reference)  # quantized for real
    assert float((got - reference).abs().max()) <= 0.1 * float(reference.abs().max())
    assert float((got.argmax(-1) == reference.argmax(-1)).float().mean()) >= 0.75
    policy = POLICIES["entropy"](float(entropy(every_exit(runtime, inputs)[:-1]).median()))
    for text in TEXTS:
        one = encode(model, [text])
        result = engine.run(runtime, one, policy)
        assert torch.equal(result.exit_layer, simulate_exits(every_exit(runtime, one), policy))


def test_distilbert_checkpoint_exports_predicts_and_serves(folders, tmp_path, capsys):  # noqa: F811
    """The commands on a DistilBERT checkpoint trained by ``metabert train``: ``export`` (fp32, then
    ``--quantize int8``), ``predict --onnx`` and the server over the ORT runner."""
    from fastapi.testclient import TestClient

    from metabert.deploy.runners import load_runner
    from metabert.deploy.server.app import create_app

    rows = [("a delightful , moving film", "pos"), ("dull and lifeless", "neg"), ("great fun", "pos"),
            ("a mess", "neg"), ("wonderful acting", "pos"), ("boring", "neg")] * 6
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--task", "custom", "--train-file", str(train), "--dev-file", str(train),
                 "--text-columns", "text", "--label-column", "label", "--model", str(folders["distilbert"]),
                 "--epochs", "1", "--output", str(ckpt), "--no-progress"]) == 0
    capsys.readouterr()
    fp32, int8 = tmp_path / "onnx", tmp_path / "onnx-int8"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(fp32)]) == 0
    said = capsys.readouterr().out
    assert "(the ort runner)" in said and float(said.split("full graph's: ")[1].split()[0]) < 1e-4
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(int8), "--quantize", "int8"]) == 0
    assert "(the ort-int8 runner)" in capsys.readouterr().out

    texts = tmp_path / "in.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in rows[:6]))
    model = MultiExitBert.from_pretrained(ckpt)
    for folder, runner in ((fp32, "ort"), (int8, "ort-int8")):
        out = tmp_path / f"{runner}.jsonl"
        assert main(["predict", "--checkpoint", str(ckpt), "--onnx", str(folder), "--input", str(texts),
                     "--output", str(out), "--no-progress"]) == 0
        assert f"{runner}, exit policy" in capsys.readouterr().err
        answers = [json.loads(line) for line in out.read_text().splitlines()]
        assert [a["line"] for a in answers] == [1, 2, 3, 4, 5, 6]
        assert all(a["label"] in ("neg", "pos") and 1 <= a["exit_layer"] <= 3 for a in answers)
        if runner == "ort":  # the fp32 graphs answer as the checkpoint does
            enc = dict(model.tokenizer([t for t, _ in rows[:6]], padding=True, return_tensors="pt"))
            eager = model.early_exit(**enc)
            assert [a["exit_layer"] for a in answers] == eager.exit_layer.tolist()
            probabilities = np.array([[a["probabilities"][n] for n in ("neg", "pos")] for a in answers])
            assert np.abs(probabilities - eager.logits.softmax(-1).numpy()).max() < 1e-3

        app = create_app(model, runner=load_runner(None, model, folder))
        with TestClient(app) as client:
            body = client.post("/predict", json={"texts": ["a fine film", "awful"]}).json()
            assert [r["label"] in ("neg", "pos") for r in body["results"]] == [True, True]
            assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("family", ["distilbert", "deberta-v2", "modernbert"])
def test_the_single_file_refuses_a_layer_state_it_does_not_carry(exports, family):
    """The single file carries the BERT layout's (mask, pool) from layer to layer; another family's
    state is refused with the way to serve it instead."""
    from metabert.deploy.single_file import write

    _, folder = exports(family, "base")
    with pytest.raises(ValueError, match=r"carries the BERT layout's layer state.*metabert serve --onnx"):
        write(folder)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_a_retrofitted_classifier_int8_export_serves_its_label_names(classifiers, family, tmp_path):  # noqa: F811
    """``metabert retrofit`` on a tiny classifier of the family, ``export --quantize int8`` (the INT8
    runner calibrated against the original fp32 answers), then the server over that runner: answers
    carry the classifier's own label names."""
    from fastapi.testclient import TestClient

    from metabert.deploy.runners import load_runner
    from metabert.deploy.server.app import create_app
    from test_heads import LABELS

    texts = tmp_path / "texts.txt"
    words = "good bad great awful fine dull film plot actor story boring lovely weak strong".split()
    gen = np.random.default_rng(0)
    texts.write_text("".join(" ".join(gen.choice(words, gen.integers(2, 10))) + "\n" for _ in range(1200)))
    ck, int8 = tmp_path / "ck", tmp_path / "int8"
    assert main(["retrofit", "--model", str(classifiers[family]), "--texts", str(texts), "--output", str(ck),
                 "--consistency", "0.9", "--no-progress"]) == 0  # a promise 240 held-out texts can certify
    assert main(["export", "--checkpoint", str(ck), "--output", str(int8), "--quantize", "int8", "--no-progress"]) == 0
    model = MultiExitBert.from_pretrained(ck)
    assert model.config.exit_policy["runners"]["ort-int8"]["promise"]["compared_with"] == "the fp32 model"
    runner = load_runner(None, model, int8)
    assert runner.name == "ort-int8"
    with TestClient(create_app(model, runner=runner)) as client:
        body = client.post("/predict", json={"texts": ["a fine film", "awful plot", "good story"]}).json()
    assert len(body["results"]) == 3
    assert all(r["label"] in LABELS.values() and 1 <= r["exit_layer"] <= model.num_layers for r in body["results"])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_bench_layer_profile_and_bound_read_any_familys_graphs(exports, family):
    """``metabert.bench.profile``: one layer graph's kernels by group and its lower bound, from the
    graph's own weights, for every family's export."""
    from metabert.bench import profile

    model, folder = exports(family, "base")
    runner = OrtMultiExit(folder)
    singles = [encode(model, [text]) for text in TEXTS[:3]]
    kernels = profile.layer_kernels(runner, singles, count=3, repeats=4)
    assert kernels["unprofiled_call_us"] > 0 and sum(kernels["kernel_us"].values()) > 0
    bound = profile.layer_bound(runner, kernels["tokens_mean"], kernels["hidden"])
    assert bound["macs"] > 0 and bound["bound_us"] == max(bound["memory_us"], bound["compute_us"]) > 0
