"""``metabert.model.heads``: a fine-tuned ``*ForSequenceClassification`` of every supported family (a
tiny random config of the family's own config class, saved with MiniLM's tokenizer) split into
encoder and its own head; our layer loop plus that head gives the library model's logits, and a
``MultiExitBert`` with it as last exit keeps them through save and load."""

import functools
import inspect

import pytest
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, BertConfig,
                          BertForTokenClassification, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel)

from metabert.model.families import ADAPTERS, adapter_for
from metabert.model.backbones import load_backbone
from metabert.model.heads import FAMILY_HEADS, FamilyHead, head_from_config, load_sequence_classifier
from metabert.model.multi_exit import MultiExitBert, MultiExitConfig
from test_backbones import tiny_configs

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
SINGLE = ["a delightful , moving film that is great fun from start to finish", "dull", "a mess , but fun",
          "wonderful acting and a story that never lets go of you"]
PAIRS = (["a man is playing a guitar", "the cat sleeps", "it rains", "two dogs run through a field of snow"],
         ["someone plays music on a guitar outdoors", "a dog barks", "the weather is wet today", "dogs"])
VARIANTS = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert", "modernbert-mean")


def classifier_configs(tokenizer) -> dict:
    """variant -> a 3-class config of the family's own class; ModernBERT with both its poolings."""
    configs = tiny_configs(tokenizer)
    configs["modernbert-mean"] = AutoConfig.for_model(**{**configs["modernbert"].to_dict(), "classifier_pooling": "mean"})
    for config in configs.values():
        config.id2label, config.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
    return configs


@pytest.fixture(scope="module")
def tokenizer():
    return load_backbone("tiny").tokenizer


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory, tokenizer):
    """variant -> a saved tiny classifier folder. The head's weights are redrawn with std 0.5 (the
    library's 0.02 gives logits near 1e-3, where a 1e-5 tolerance would hide a wrong head)."""
    out = {}
    for variant, config in classifier_configs(tokenizer).items():
        folder = tmp_path_factory.mktemp(variant)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config)
        prefix = model.base_model_prefix + "."
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not name.startswith(prefix) or ".pooler." in name:
                    param.normal_(0.0, 0.5)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[variant] = folder
    return out


def encode(tokenizer, pair: bool) -> dict:
    enc = dict(tokenizer(*PAIRS, padding=True, return_tensors="pt") if pair else
               tokenizer(SINGLE, padding=True, return_tensors="pt"))
    assert not enc["attention_mask"].all()  # padding in the batch
    return enc


@functools.lru_cache(maxsize=None)
def library_model(folder):
    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def library_logits(folder, enc: dict) -> torch.Tensor:
    """The classifier run the plain way; token types only for the families whose forward takes them."""
    model = library_model(folder)
    accepted = inspect.signature(model.forward).parameters
    with torch.no_grad():
        return model(**{k: v for k, v in enc.items() if k in accepted}).logits


def loop_logits(loaded, enc: dict) -> torch.Tensor:
    """Our layer loop (embed, layer inputs, every layer, the family's output) and the head."""
    adapter = adapter_for(loaded.encoder.config.model_type)
    encoder, mask = loaded.encoder, enc["attention_mask"]
    with torch.no_grad():
        hidden = adapter.embed(encoder, enc["input_ids"], enc.get("token_type_ids"), mask)
        inputs = adapter.layer_inputs(encoder, hidden, mask, False)
        for i in range(len(adapter.layers(encoder))):
            hidden = adapter.run_layer(encoder, i, hidden, inputs)
        if adapter.output is not None:
            hidden = adapter.output(encoder, hidden)
        return loaded.head(hidden, mask)


def test_every_adapter_family_has_a_head():
    assert set(FAMILY_HEADS) == set(ADAPTERS)
    assert {AutoConfig.for_model(**c.to_dict()).model_type for c in classifier_configs(load_backbone("tiny").tokenizer)
            .values()} == set(FAMILY_HEADS)


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_loop_and_head_give_the_library_logits(classifiers, tokenizer, variant, pair):
    loaded = load_sequence_classifier(classifiers[variant])
    assert isinstance(loaded.head, FamilyHead) and not loaded.encoder.training and not loaded.head.training
    enc = encode(tokenizer, pair)
    theirs = library_logits(classifiers[variant], enc)
    assert theirs.shape == (4, 3) and float(theirs.std()) > 0.1  # logits that a wrong head would miss
    torch.testing.assert_close(loop_logits(loaded, enc), theirs, atol=1e-5, rtol=0)


def test_bert_pairs_use_token_types(classifiers, tokenizer):
    """The pair test means something: BERT's logits change when the token types are dropped."""
    enc = encode(tokenizer, pair=True)
    assert enc["token_type_ids"].any()
    loaded = load_sequence_classifier(classifiers["bert"])
    without = {k: v for k, v in enc.items() if k != "token_type_ids"}
    assert float((loop_logits(loaded, enc) - loop_logits(loaded, without)).abs().max()) > 1e-3


def test_modernbert_mean_pooling_reads_the_mask(classifiers, tokenizer):
    """``classifier_pooling: mean`` averages the real tokens only: no mask, another answer for padded rows."""
    enc = encode(tokenizer, pair=False)
    loaded = load_sequence_classifier(classifiers["modernbert-mean"])
    assert loaded.head.pooling == "mean" and load_sequence_classifier(classifiers["modernbert"]).head.pooling == "cls"
    with torch.no_grad():
        hidden = torch.randn(4, enc["input_ids"].shape[1], 32)
        masked, unmasked = loaded.head(hidden, enc["attention_mask"]), loaded.head(hidden, None)
    padded = ~enc["attention_mask"].bool().all(1)
    assert float((masked - unmasked)[padded].abs().min()) > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_head_holds_the_checkpoint_weights_under_their_names(classifiers, variant):
    """Every head tensor is the saved classifier's tensor of the name ``original_keys`` gives; the
    labels and the problem come from the config; BERT's pooler left the encoder for the head."""
    loaded = load_sequence_classifier(classifiers[variant])
    saved = library_model(classifiers[variant]).state_dict()
    keys = loaded.head.original_keys()
    assert keys and all(torch.equal(tensor, saved[keys[name]]) for name, tensor in loaded.head.state_dict().items())
    base = {loaded.encoder.base_model_prefix + "." + k for k in loaded.encoder.state_dict()}
    assert set(keys.values()) | base >= {k for k in saved}  # nothing of the classifier is left out
    assert not set(keys.values()) & base  # nor held twice
    assert loaded.id2label == LABELS
    assert loaded.problem["family"] == loaded.encoder.config.model_type
    assert loaded.problem["architecture"].endswith("ForSequenceClassification")
    assert loaded.problem["problem_type"] == "single_label_classification" and not loaded.problem["problem_type_stated"]
    fresh = head_from_config(loaded.encoder.config)
    assert type(fresh) is type(loaded.head) and fresh.state_dict().keys() == loaded.head.state_dict().keys()


# ------------------------------------------------------------------- as the last exit of MultiExitBert
@pytest.mark.parametrize("variant", VARIANTS)
def test_multi_exit_last_exit_is_the_classifier_through_save_and_load(classifiers, tokenizer, variant, tmp_path):
    model = MultiExitBert.from_classifier(classifiers[variant], seed=1)
    assert model.config.last_head == model.encoder.config.model_type
    assert model.config.label_names == tuple(LABELS.values())
    for pair in (False, True):
        enc = encode(tokenizer, pair)
        theirs = library_logits(classifiers[variant], enc)
        with torch.no_grad():
            every = model(**enc)
            assert every.shape == (model.num_layers, 4, 3)
            torch.testing.assert_close(every[-1], theirs, atol=1e-5, rtol=0)
            torch.testing.assert_close(model.full_logits(**enc), theirs, atol=1e-5, rtol=0)
        never = model.early_exit(**enc, threshold=-1.0)  # no early exit: everyone answers at the last
        assert never.exit_layer.tolist() == [model.num_layers] * 4
        torch.testing.assert_close(never.logits, theirs, atol=1e-5, rtol=0)
        one = {k: v[1:2, : int(enc["attention_mask"][1].sum())] for k, v in enc.items()}  # unpadded batch of 1
        torch.testing.assert_close(model.full_logits(**one), library_logits(classifiers[variant], one),
                                   atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path / "ck")
    loaded = MultiExitBert.from_pretrained(tmp_path / "ck")
    assert loaded.config.last_head == model.config.last_head and isinstance(loaded.exits[-1], FamilyHead)
    enc = encode(tokenizer, pair=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc), model(**enc), atol=0, rtol=0)
        torch.testing.assert_close(loaded(**enc)[-1], library_logits(classifiers[variant], enc), atol=1e-5, rtol=0)


def test_truncating_drops_the_family_head(classifiers, tmp_path):
    model = MultiExitBert.from_classifier(classifiers["bert"])
    model.truncate(2)
    assert model.config.last_head == "" and not any(isinstance(head, FamilyHead) for head in model.exits)
    model.save_pretrained(tmp_path / "short")
    assert MultiExitBert.from_pretrained(tmp_path / "short").num_layers == 2
    full = MultiExitBert.from_classifier(classifiers["bert"])
    full.truncate(full.num_layers)  # keeping every layer keeps the head
    assert full.config.last_head == "bert" and isinstance(full.exits[-1], FamilyHead)


def test_last_head_is_validated():
    with pytest.raises(ValueError, match="last_head must be '' or one of.*bert.*modernbert.*got 'gpt2'"):
        MultiExitConfig(num_labels=2, label_names=("a", "b"), last_head="gpt2")
    encoder = AutoModel.from_config(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=37))
    with pytest.raises(ValueError, match="last_head 'roberta' does not match the encoder's family 'bert'"):
        MultiExitBert(MultiExitConfig(num_labels=2, label_names=("a", "b"), last_head="roberta"), encoder)


def test_eager_int8_keeps_the_family_head_fp32(classifiers, tokenizer):
    from metabert.engine import loop as engine
    from metabert.model.multi_exit import EagerRunner
    from metabert.deploy.runners import EagerInt8Runner

    model = MultiExitBert.from_classifier(classifiers["roberta"])
    runner = EagerInt8Runner(model)
    assert type(runner.model.exits[-1].classifier.dense) is torch.nn.Linear
    enc = encode(tokenizer, pair=False)
    ours = engine.run_full(runner, enc).logits
    fp32 = engine.run_full(EagerRunner(model), enc).logits
    assert float((ours - fp32).abs().max()) <= 0.1 * float(fp32.abs().max())


@pytest.mark.parametrize("variant", ["bert", "roberta"])
def test_onnx_export_traces_the_family_head(classifiers, tokenizer, variant, tmp_path):
    from metabert.deploy.onnx_export import check_export, export
    from metabert.deploy.ort_runner import OrtMultiExit

    model = MultiExitBert.from_classifier(classifiers[variant])
    runtime = OrtMultiExit(export(model, None, tmp_path / "onnx"))
    assert check_export(model, runtime) < 1e-4
    enc = {k: v.numpy() for k, v in encode(tokenizer, pair=True).items()}
    ort_last = runtime.all_exit_logits({k: torch.from_numpy(v) for k, v in enc.items()})[-1]
    theirs = library_logits(classifiers[variant], {k: torch.from_numpy(v) for k, v in enc.items()})
    torch.testing.assert_close(torch.as_tensor(ort_last), theirs, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ bad input
def save(model_or_config, folder, tokenizer=None):
    model_or_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def tiny_bert(**changes) -> BertConfig:
    return BertConfig(**{**dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=37), **changes})


def test_a_bare_encoder_is_refused(tmp_path):
    folder = save(AutoModel.from_config(tiny_bert()), tmp_path / "bare")
    with pytest.raises(ValueError, match=r"bare is not a sequence classifier.*BertModel \(a bare encoder"):
        load_sequence_classifier(folder)


def test_a_token_classifier_is_refused(tmp_path):
    folder = save(BertForTokenClassification(tiny_bert(num_labels=5)), tmp_path / "ner")
    with pytest.raises(ValueError, match=r"ner is not a sequence classifier.*BertForTokenClassification \(a token"):
        load_sequence_classifier(folder)


def test_a_decoder_is_refused(tmp_path):
    gpt2 = dict(vocab_size=99, n_embd=32, n_layer=1, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0,
                pad_token_id=0)
    lm = save(GPT2LMHeadModel(GPT2Config(**gpt2)), tmp_path / "lm")
    with pytest.raises(ValueError, match=r"lm is not a sequence classifier.*GPT2LMHeadModel \(a decoder"):
        load_sequence_classifier(lm)
    classifier = save(GPT2ForSequenceClassification(GPT2Config(**gpt2)), tmp_path / "gpt")
    with pytest.raises(ValueError, match=r"gpt: model type 'gpt2' has no supported.*supported model types: bert, "
                                         r"roberta, xlm-roberta, electra, distilbert, deberta-v2, modernbert"):
        load_sequence_classifier(classifier)
    as_decoder = tiny_bert(is_decoder=True, architectures=["BertForSequenceClassification"])
    with pytest.raises(ValueError, match=r"dec: a decoder \(bert with is_decoder=true\)"):
        load_sequence_classifier(save(as_decoder, tmp_path / "dec"))


@pytest.mark.parametrize("changes, message", [
    ({"num_labels": 1}, r"reg is a regression model \(num_labels=1"),
    ({"num_labels": 3, "problem_type": "regression"}, r"reg is a regression model \(num_labels=3"),
    ({"num_labels": 4, "problem_type": "multi_label_classification"}, r"reg is a multi-label classifier.*4 independent"),
])
def test_regression_and_multi_label_are_refused(tmp_path, changes, message):
    config = tiny_bert(architectures=["BertForSequenceClassification"], **changes)
    with pytest.raises(ValueError, match=message):
        load_sequence_classifier(save(config, tmp_path / "reg"))


def test_weights_without_the_head_are_refused(tmp_path, tokenizer):
    """A config that claims a classifier over a bare encoder's weights: the head would be random."""
    folder = save(AutoModel.from_config(tiny_bert(vocab_size=len(tokenizer))), tmp_path / "claims", tokenizer)
    config = AutoConfig.from_pretrained(folder)
    config.architectures = ["BertForSequenceClassification"]
    config.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"claims: its weights lack \d+ tensors of BertForSequenceClassification "
                                         r"\(.*classifier.weight"):
        load_sequence_classifier(folder)


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        load_sequence_classifier(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"empty is not a transformers model folder: no config.json \(found: notes.txt"):
        load_sequence_classifier(tmp_path / "empty")
