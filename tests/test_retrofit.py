"""Retrofit: a user's fine-tuned classifier gets early exits without labels. The original model stays
the last exit exactly, a label-free run never reads labels, too few texts are refused with the
number the promise needs, and the retrofitted checkpoint predicts, exports and calibrates its INT8
runner against the original fp32 answers."""

import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from metabert.cli import build_parser, main
from metabert.data.files import DataError
from metabert.model.backbones import minilm_path
from metabert.model.multi_exit import MultiExitBert
from metabert.training.retrofit import RECORD_NAME, RetrofitConfig, retrofit

WORDS = "good bad great awful fine dull film plot actor story boring lovely weak strong funny sad".split()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny fine-tuned-looking BERT classifier saved as a user has it: its own head, named classes."""
    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                        label2id={"NEGATIVE": 0, "POSITIVE": 1})
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # a confident head, so that its answers depend on the text
        model.classifier.weight.mul_(200.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_texts(path, count: int, seed: int = 0, label: str | None = None):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(count)]
    if label is None:
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t in lines))
    return lines


def test_the_original_model_is_the_last_exit_and_calibration_is_stored(classifier, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    lines = write_texts(texts, 2000)
    out = tmp_path / "ck"
    assert main(["retrofit", "--model", str(classifier), "--texts", str(texts), "--output", str(out),
                 "--epochs", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2000 texts, 1600 trained the exits (without labels), 400 held out" in printed
    model = MultiExitBert.from_pretrained(out)
    original = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    assert model.config.label_names == ("NEGATIVE", "POSITIVE") and model.config.last_head == "bert"
    enc = model.tokenizer(lines[:9], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(model(**enc)[-1], original(**enc).logits, atol=1e-5)
    policy = model.config.exit_policy
    assert policy["promise"]["kind"] == "consistency" and policy["promise"]["consistency"] == 0.99
    assert policy["promise"]["calibration_size"] == 400
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["labels_used"] is False and len(record["head_loss_per_epoch"]) == 3
    assert record["head_loss_per_epoch"][-1] < record["head_loss_per_epoch"][0]  # the exits learn the original
    # predict names the original's classes, and the full model answers as the original does
    pred = tmp_path / "pred.jsonl"
    assert main(["predict", "--checkpoint", str(out), "--input", str(texts), "--output", str(pred), "--threshold", "0",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    with torch.inference_mode():
        want = original(**model.tokenizer(lines[:50], padding=True, return_tensors="pt")).logits.argmax(-1)
    assert [r["label"] for r in rows[:50]] == [("NEGATIVE", "POSITIVE")[i] for i in want.tolist()]


def test_a_label_free_run_never_reads_labels(classifier, tmp_path):
    texts = tmp_path / "texts.tsv"
    write_texts(texts, 1600, label="not-a-class")  # labels no class matches: reading them would fail
    config = RetrofitConfig(model=str(classifier), texts=str(texts), output=str(tmp_path / "ck"), epochs=1)
    assert retrofit(config, progress=False)["labels_used"] is False
    with pytest.raises(DataError, match=r"texts.tsv:2: unknown label 'not-a-class'.*NEGATIVE"):
        retrofit(RetrofitConfig(**{**config.__dict__, "label_column": "label"}), progress=False)


def test_labels_by_class_index_add_a_cross_entropy_term(classifier, tmp_path):
    texts = tmp_path / "texts.tsv"
    write_texts(texts, 1600, label="1")
    config = RetrofitConfig(model=str(classifier), texts=str(texts), output=str(tmp_path / "ck"), epochs=1,
                            label_column="label")
    assert retrofit(config, progress=False)["labels_used"] is True


def test_too_few_texts_say_how_many_the_promise_needs(classifier, tmp_path):
    texts = tmp_path / "few.txt"
    write_texts(texts, 500)
    config = RetrofitConfig(model=str(classifier), texts=str(texts), output=str(tmp_path / "ck"))
    with pytest.raises(DataError, match=r"500 texts hold out 100 for calibration.*needs at least 299.*at least 1495 texts"):
        retrofit(config, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="no texts"):
        retrofit(RetrofitConfig(model=str(classifier), texts=str(empty), output=str(tmp_path / "ck")), progress=False)


def test_a_cache_on_disk_trains_the_same_heads(classifier, tmp_path):
    texts = tmp_path / "texts.txt"
    write_texts(texts, 1600)
    weights = []
    for name, limit in (("memory", 2048.0), ("disk", 0.0)):
        config = RetrofitConfig(model=str(classifier), texts=str(texts), output=str(tmp_path / name), epochs=2,
                                max_cache_mb=limit)
        assert retrofit(config, progress=False)["cache_on_disk"] is (limit == 0.0)
        weights.append(MultiExitBert.from_pretrained(tmp_path / name).exits[0].classifier.weight)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_a_retrofitted_model_exports_and_its_int8_runner_answers_for_the_fp32_model(classifier, tmp_path):
    pytest.importorskip("onnxruntime")
    texts = tmp_path / "texts.txt"
    write_texts(texts, 1600)
    ck = tmp_path / "ck"
    retrofit(RetrofitConfig(model=str(classifier), texts=str(texts), output=str(ck), epochs=2), progress=False)
    assert main(["export", "--checkpoint", str(ck), "--output", str(tmp_path / "onnx"), "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(ck), "--output", str(tmp_path / "int8"), "--quantize", "int8",
                 "--no-progress"]) == 0
    stored = MultiExitBert.from_pretrained(ck).config.exit_policy["runners"]["ort-int8"]
    assert stored["promise"]["kind"] == "consistency" and stored["promise"]["compared_with"] == "the fp32 model"
    assert "agreeing with the fp32 model" in stored["goal"]
    # calibrate again for another promise: the held-out texts, against the fp32 answers
    assert main(["calibrate", "--checkpoint", str(ck), "--onnx", str(tmp_path / "int8"), "--consistency", "0.9",
                 "--no-progress"]) == 0
    again = MultiExitBert.from_pretrained(ck).config.exit_policy["runners"]["ort-int8"]
    assert again["promise"]["consistency"] == 0.9 and again["promise"]["compared_with"] == "the fp32 model"
    with pytest.raises(ValueError, match="calibrate with --consistency"):
        from metabert.commands import calibrate

        calibrate.run(build_args(["calibrate", "--checkpoint", str(ck), "--max-drop", "1"]))


def test_the_plain_runners_answer_as_the_classifier_does(classifier, tmp_path):
    """The baselines retrofit is timed against: the classifier in eager transformers, and its plain
    ONNX export in ONNX Runtime (fp32 equal to 1e-4; INT8 runs)."""
    pytest.importorskip("onnxruntime")
    from metabert.deploy.plain import OrtFullRunner, TransformersRunner, export_classifier, quantize_classifier

    hf = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    enc = dict(tokenizer(["good film", "a long and rather boring story about an actor"], padding=True,
                         return_tensors="pt"))
    want = TransformersRunner(hf).full(enc)
    path = export_classifier(hf, tokenizer, tmp_path / "model.onnx")
    assert torch.allclose(OrtFullRunner(path, "plain-ort", 3).full(enc), want, atol=1e-4)
    int8 = OrtFullRunner(quantize_classifier(path, tmp_path / "int8.onnx"), "plain-ort-int8", 3).full(enc)
    assert int8.shape == want.shape and torch.isfinite(int8).all()


def test_the_first_texts_only(classifier, tmp_path):
    """--max-texts: the slice is cut from the first N texts, and export's INT8 calibration finds it again."""
    texts = tmp_path / "texts.txt"
    write_texts(texts, 2500)
    ck = tmp_path / "ck"
    record = retrofit(RetrofitConfig(model=str(classifier), texts=str(texts), output=str(ck), epochs=1,
                                     max_texts=1600), progress=False)
    assert record["texts"] == 1600 and record["held_out"] == 320
    from metabert.eval.calibrate import calibration_texts

    encoded, what = calibration_texts(MultiExitBert.from_pretrained(ck))
    assert len(encoded) == 320 and "1600 texts" in what


def build_args(argv):
    args = build_parser().parse_args(argv)
    args.command_line = "metabert " + " ".join(argv)
    return args
