"""Every encoder family in ``metabert.model.families.ADAPTERS`` on a tiny random config of its own config
class, saved as a local folder with MiniLM's tokenizer: our layer loop reproduces the library
model's forward, and training, early exit and checkpoints work on it."""

import json

import pytest
import torch
from transformers import (
    AutoModel,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from conftest import diversify
from metabert.model.families import ADAPTERS, adapter_for
from metabert.model.backbones import load_backbone
from metabert.cli import main
from metabert.engine.policies import entropy
from metabert.model.multi_exit import MultiExitBert

SENTENCES = ["a delightful , moving film that is great fun from start to finish", "dull", "a mess , but fun",
             "wonderful acting and a story that never lets go of you"]


def tiny_configs(tokenizer) -> dict:
    """Tiny random configs (hidden 32, 4 heads), vocabularies covering the tokenizer's ids."""
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=37, pad_token_id=pad)
    return {
        "bert": BertConfig(**common),
        "roberta": RobertaConfig(**common),
        "xlm-roberta": XLMRobertaConfig(**common),
        "electra": ElectraConfig(**common, embedding_size=16),  # E != H: embeddings_project
        "distilbert": DistilBertConfig(vocab_size=vocab, dim=32, n_layers=3, n_heads=4, hidden_dim=37, pad_token_id=pad),
        # DeBERTa-v3's layout: relative attention with buckets, no absolute positions, a conv after layer 0
        "deberta-v2": DebertaV2Config(**common, relative_attention=True, position_buckets=16, max_relative_positions=32,
                                      pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                      norm_rel_ebd="layer_norm", share_att_key=True, conv_kernel_size=3),
        # local window 4 < the longest sentence, so the sliding-window mask matters
        "modernbert": ModernBertConfig(**{**common, "num_hidden_layers": 4}, global_attn_every_n_layers=2,
                                       local_attention=4, bos_token_id=tokenizer.cls_token_id,
                                       eos_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id,
                                       sep_token_id=tokenizer.sep_token_id),
    }


FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> a saved tiny random model folder with a tokenizer (what ``--model <folder>`` gets)."""
    tokenizer = load_backbone("tiny").tokenizer
    out = {}
    for family, config in tiny_configs(tokenizer).items():
        folder = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[family] = folder
    return out


def batch(tokenizer):
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def test_every_family_is_registered():
    assert set(FAMILIES) == set(ADAPTERS)


def test_unsupported_family_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"'gpt2' is not supported.*bert.*distilbert.*deberta-v2.*modernbert"):
        adapter_for("gpt2")


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_matches_library_forward(folders, family):
    """Our last layer's output equals the library's ``last_hidden_state`` on real (unpadded) tokens,
    with padding in the batch."""
    model = MultiExitBert.from_backbone(str(folders[family]), ["neg", "pos"]).eval()
    reference = AutoModel.from_pretrained(folders[family]).eval()
    inputs = batch(model.tokenizer)
    assert not inputs["attention_mask"].all()  # padding present
    with torch.no_grad():
        ours = model.hidden_states(inputs["input_ids"], inputs["attention_mask"])[-1]
        theirs = reference(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    real = inputs["attention_mask"].bool()
    assert model.num_layers == reference.config.num_hidden_layers
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_early_exit_and_round_trip(folders, family, tmp_path):
    model = MultiExitBert.from_backbone(str(folders[family]), ["neg", "pos"], seed=1).train()
    inputs = batch(model.tokenizer)
    args = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    logits = model(**args)  # (L, B, C)
    assert logits.shape == (model.num_layers, len(SENTENCES), 2)
    logits.logsumexp(-1).sum().backward()
    assert model.encoder.embeddings.parameters().__next__().grad is not None

    model.eval()
    diversify(model, scale=5.0)  # large random heads so that exits differ across samples
    with torch.no_grad():  # a threshold between the samples' entropies at the first exit
        first = entropy(model(**args)[0]).sort().values  # (B,)
        threshold = float(first[1:3].mean())  # halfway between two samples: far from either
    together = model.early_exit(**args, threshold=threshold)
    assert len(set(together.exit_layer.tolist())) > 1, "every sample left at the same exit: the test shows nothing"
    for b in range(len(SENTENCES)):
        length = int(inputs["attention_mask"][b].sum())
        alone = model.early_exit(input_ids=inputs["input_ids"][b:b + 1, :length],
                                 attention_mask=inputs["attention_mask"][b:b + 1, :length], threshold=threshold)
        assert int(alone.exit_layer[0]) == int(together.exit_layer[b])
        torch.testing.assert_close(alone.logits[0], together.logits[b], atol=1e-4, rtol=1e-4)

    model.save_pretrained(tmp_path / "ckpt")
    loaded = MultiExitBert.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**args), model(**args))

    loaded.truncate(2)
    assert loaded.num_layers == 2 and loaded(**args).shape[0] == 2
    loaded.save_pretrained(tmp_path / "short")
    assert MultiExitBert.from_pretrained(tmp_path / "short").num_layers == 2


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_cli_train_on_local_folder(folders, family, tmp_path):
    rows = [("a delightful , moving film", "pos"), ("dull and lifeless", "neg"), ("great fun", "pos"),
            ("a mess", "neg")] * 4
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows[:4]))
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--task", "custom", "--train-file", str(train), "--dev-file", str(dev),
                 "--text-columns", "text", "--label-column", "label", "--model", str(folders[family]),
                 "--epochs", "1", "--output", str(ckpt), "--no-progress"]) == 0
    assert MultiExitBert.from_pretrained(ckpt).config.backbone_config["model_type"] == family


def test_layer_inputs_select_rows_keeps_shared_and_broadcast():
    from metabert.model.families import LayerInputs

    keep = torch.tensor([True, False, True])
    inputs = LayerInputs(torch.zeros(3, 1, 1, 5), torch.full((3, 5, 1), 0.2),
                         rows={"window": torch.zeros(3, 1, 5, 5), "broadcast": torch.zeros(1, 1, 5, 5), "none": None},
                         shared={"rotary": torch.zeros(1, 5, 8)})
    kept = inputs.select(keep)
    assert kept.mask.shape[0] == 2 and kept.pool_weights.shape[0] == 2 and kept.rows["window"].shape[0] == 2
    assert kept.rows["broadcast"].shape[0] == 1 and kept.rows["none"] is None
    assert kept.shared["rotary"] is inputs.shared["rotary"]
    assert LayerInputs(None, None).select(keep) == LayerInputs(None, None)


@pytest.mark.parametrize("family", FAMILIES)
def test_eager_int8_quantizes_every_family(folders, family):
    """``eager-int8`` on each family: encoder Linear layers, word embeddings and the exit heads' dense
    layers in INT8, answering close to the fp32 model, on a slice of a padded batch (a view, which
    INT8 lookups refuse as such). The random heads have unit-scale weights (trained ones are far
    smaller): at scale 5 nearly every tanh unit saturates, and the few near zero that INT8 flips
    move DeBERTa's logits by 13%."""
    from metabert.engine import loop as engine
    from metabert.model.multi_exit import EagerRunner
    from metabert.deploy.runners import EagerInt8Runner

    model = diversify(MultiExitBert.from_backbone(str(folders[family]), ["neg", "pos"], seed=1), scale=1.0).eval()
    runner = EagerInt8Runner(model)
    encoder = runner.model.encoder
    assert isinstance(encoder.get_input_embeddings(), torch.ao.nn.quantized.Embedding)
    assert not any(type(m) is torch.nn.Linear for m in encoder.modules())
    assert all(isinstance(head.dense, torch.ao.nn.quantized.dynamic.Linear) for head in runner.model.exits)
    assert all(type(head.classifier) is torch.nn.Linear for head in runner.model.exits)
    inputs = batch(model.tokenizer)
    length = int(inputs["attention_mask"][1:3].sum(1).max())
    sliced = {k: v[1:3, :length] for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    assert not sliced["input_ids"].is_contiguous()
    ours = engine.run_full(runner, sliced).logits
    fp32 = engine.run_full(EagerRunner(model), sliced).logits
    assert float((ours - fp32).abs().max()) <= 0.1 * float(fp32.abs().max())
