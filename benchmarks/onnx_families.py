"""ONNX export of every encoder family, on the tiny random models of the tests: how far ONNX Runtime's
logits are from PyTorch's (every exit's, through the layer graphs, and the full graph's) and how often
the INT8 graphs (``export --quantize int8``: dynamic, per channel) answer with the fp32 graphs' class.

The models are tests/test_backbones.py's tiny configs (hidden 32, 3-4 layers) with exit heads drawn
at std 0.3 (as tests/test_onnx_families.py draws them; the fresh heads' logits are near zero), and a
retrofitted tiny ``*ForSequenceClassification`` of each family (tests/test_heads.py's, its own head
as the last exit). Random weights: the figures say whether the graphs compute what PyTorch does, not
how accurate anything is. The texts are SST-2 dev's sentences, padded in batches of 32.

Usage: GLUE_DIR=... python benchmarks/onnx_families.py [COUNT]   (prints a markdown table)"""

import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_backbones import FAMILIES, tiny_configs  # noqa: E402
from test_heads import classifier_configs  # noqa: E402
from test_onnx_families import spread  # noqa: E402

from metabert.common.machine import hardware  # noqa: E402
from metabert.data.batching import pad_all, tokenize  # noqa: E402
from metabert.data.files import read_table  # noqa: E402
from metabert.deploy.onnx_export import export  # noqa: E402
from metabert.deploy.ort_runner import OrtMultiExit  # noqa: E402
from metabert.deploy.quantize import quantize_export  # noqa: E402
from metabert.model.backbones import load_backbone  # noqa: E402
from metabert.model.multi_exit import MultiExitBert  # noqa: E402


def folders(root: Path) -> dict:
    """(family, kind) -> a saved tiny model folder: a bare encoder ("base") or a classifier ("retrofit")."""
    tokenizer = load_backbone("tiny").tokenizer
    out = {}
    for kind, configs, auto in (("base", tiny_configs(tokenizer), AutoModel),
                                ("retrofit", classifier_configs(tokenizer), AutoModelForSequenceClassification)):
        for family in FAMILIES:
            folder = root / f"{family}-{kind}"
            torch.manual_seed(0)
            model = auto.from_config(configs[family])
            if kind == "retrofit":  # the head's weights at std 0.5, as tests/test_heads.py draws them
                with torch.no_grad():
                    for name, param in model.named_parameters():
                        if not name.startswith(model.base_model_prefix + ".") or ".pooler." in name:
                            param.normal_(0.0, 0.5)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            out[family, kind] = folder
    return out


def every_exit(runtime, batch) -> torch.Tensor:
    return torch.as_tensor(runtime.all_exit_logits(batch))


def main(count: int = 872) -> None:
    glue = os.environ.get("GLUE_DIR")
    if not glue:
        raise SystemExit("set GLUE_DIR to the GLUE folder (SST-2 dev's sentences are the inputs)")
    texts = [row.values[0] for row in read_table(Path(glue) / "SST-2" / "dev.tsv", "tsv", ["sentence"])][:count]
    print(f"{len(texts)} SST-2 dev sentences, batches of 32; {hardware()}\n")
    print("| family | model | max abs diff, every exit (layer graphs) | max abs diff, full graph | "
          "INT8 same class as fp32, last exit | INT8 same class, every exit | INT8 max abs diff / max abs logit |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="metabert-families-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(tmp)
        for (family, kind), folder in folders(root / "models").items():
            if kind == "base":
                model = MultiExitBert.from_backbone(str(folder), ["neg", "pos", "mixed"], seed=1)
            else:
                model = MultiExitBert.from_classifier(folder, seed=1)
            model = spread(model, 0.3)
            fp32 = export(model, None, root / f"{family}-{kind}-fp32")
            int8 = quantize_export(fp32, root / f"{family}-{kind}-int8")
            ort, ort8 = OrtMultiExit(fp32), OrtMultiExit(int8)
            layers = full = drift = 0.0
            same_last = same_all = total = 0
            for s in range(0, len(texts), 32):
                batch = pad_all(tokenize(model.tokenizer, texts[s:s + 32], None, 128).encoded,
                                model.tokenizer.pad_token_id)
                with torch.inference_mode():
                    reference, reference_full = model(**batch), model.full_logits(**batch)
                ours, quantized = every_exit(ort, batch), every_exit(ort8, batch)
                layers = max(layers, float((ours - reference).abs().max()))
                full = max(full, float((ort.full(batch) - reference_full).abs().max()))
                drift = max(drift, float((quantized - ours).abs().max() / ours.abs().max()))
                same = quantized.argmax(-1) == ours.argmax(-1)  # (L, B)
                same_last += int(same[-1].sum())
                same_all += int(same.sum())
                total += same.shape[1]
            print(f"| {family} | {kind} | {layers:.1e} | {full:.1e} | {same_last / total:.3f} | "
                  f"{same_all / (total * model.num_layers):.3f} | {drift:.3f} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
