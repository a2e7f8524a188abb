"""metabert.training.trainer: callbacks see every step and evaluation; early stopping; the layering rules
the architecture keeps (recipes use the public API only; no command imports another)."""

from __future__ import annotations

import ast
from pathlib import Path

import metabert
from metabert.training.callbacks import Callback
from metabert.training.config import TrainConfig
from metabert.training.trainer import train

SRC = Path(metabert.__file__).parent


def write_data(folder: Path) -> tuple[Path, Path]:
    rows = [(f"sentence {i} " + "word " * (i % 4) + ("good" if i % 2 else "bad"), "pos" if i % 2 else "neg")
            for i in range(16)]
    path = folder / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    return path, path


def config(folder: Path, **options) -> TrainConfig:
    train_file, dev_file = write_data(folder)
    return TrainConfig(task="custom", output=str(folder / "ckpt"), model="tiny", train_file=str(train_file),
                       dev_file=str(dev_file), text_columns=("text",), label_column="label", batch_size=4,
                       calibration_fraction=0.0, **options)


class Counter(Callback):
    def __init__(self):
        self.steps, self.evaluations, self.ended = 0, [], False

    def on_step_end(self, trainer):
        self.steps += 1

    def on_evaluate(self, trainer, record):
        self.evaluations.append(record["epoch"])

    def on_train_end(self, trainer):
        self.ended = True


def test_callbacks_see_every_step_and_every_evaluation(tmp_path):
    counter = Counter()
    summary = train(config(tmp_path, epochs=2), progress=False, callbacks=[counter])
    assert counter.steps == 2 * 4 and counter.evaluations == [1, 2] and counter.ended
    assert summary["best"]["epoch"] in (1, 2)


def test_early_stopping_ends_the_run_after_epochs_without_a_better_score(tmp_path):
    counter = Counter()
    # a learning rate too small to change any prediction: epoch 1 is the best and no later one beats it
    summary = train(config(tmp_path, epochs=5, learning_rate=1e-12, early_stopping=2), progress=False,
                    callbacks=[counter])
    assert counter.evaluations == [1, 2, 3]
    assert summary["best"]["epoch"] == 1
    log = (Path(summary["output"]) / "log.jsonl").read_text().splitlines()
    assert len(log) == 3


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_recipes_import_only_the_public_api():
    files = sorted((SRC / "recipes").rglob("*.py"))
    assert len(files) >= 3
    for path in files:  # the public API, and the recipes' own modules
        ours = [m for m in imports(path) if m.startswith("metabert")]
        assert all(m == "metabert" or m.startswith("metabert.recipes") for m in ours), (path.name, ours)
    for name in metabert.__all__:
        assert hasattr(metabert, name), name


def test_no_command_imports_another_command():
    files = [p for p in sorted((SRC / "commands").glob("*.py")) if p.name != "__init__.py"]
    assert len(files) >= 10
    for path in files:
        others = [m for m in imports(path) if m.startswith("metabert.commands") and m != "metabert.commands.common"]
        assert not others, (path.name, others)
