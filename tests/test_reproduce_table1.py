"""`metabert reproduce` runs the six Table I systems as cells on tiny: the static ones learn from the
full-depth row of the same seed (``teacher_row``) and are tabulated at one depth."""

import json

from metabert.cli import main
from metabert.recipes.reproduce.stats import measure

ROWS = ["full=method=last", "distilbert=method=distilbert,teacher_row=full",
        "pkd=method=pkd,teacher_row=full", "theseus=method=theseus,teacher_row=full", "layerdrop=method=layerdrop",
        "shallow-deep=method=shallow-deep,policy=max-prob", "gaml=method=gaml,policy=entropy"]


def args_for(out, glue_dir, methods):
    return ["reproduce", "--tasks", "mrpc", "--methods", methods, "--seeds", "1", "--model", "tiny", "--epochs", "2",
            "--max-train-samples", "32", "--calibration-fraction", "0.3", "--batch-size", "16", "--speedups", "1.5",
            *[a for row in ROWS for a in ("--variant", row)], "--title", "Table I", "--paper", "table1",
            "--data-dir", str(glue_dir), "--output", str(out), "--no-progress"]


def test_table_one_systems_run_as_cells(tmp_path, glue_dir):
    out = tmp_path / "t1"
    methods = "full,distilbert,pkd,theseus,layerdrop,shallow-deep,gaml"
    assert main(args_for(out, glue_dir, methods)) == 0
    cell = {m: json.loads((out / "mrpc" / m / "seed0" / "result.json").read_text()) for m in methods.split(",")}
    teacher = str(out / "mrpc" / "full" / "seed0" / "checkpoint")
    for m in ("distilbert", "pkd", "theseus"):
        assert cell[m]["teacher_row"] == "full" and cell[m]["config"]["teacher"] == teacher
        assert len(cell[m]["per_exit"]) == 1  # half of tiny's 3 layers
    assert len(cell["layerdrop"]["per_exit"]) == 2  # every other of 3 layers: 1 and 3
    for m in ("distilbert", "pkd", "theseus", "layerdrop"):
        entry = cell[m]["early_exit"]["1.5"]
        assert entry["static"] and entry["dev_layer_speedup"] >= 1.5 and measure(cell[m], "mean_over_exits") is None
    assert cell["shallow-deep"]["policy"] == "max-prob" and len(cell["shallow-deep"]["per_exit"]) == 3
    assert cell["gaml"]["config"]["gaml_align"] is True
    text = (out / "table2.md").read_text()
    assert "| distilbert |" in text and "| gaml |" in text and "| DistilBERT |" in text  # ours, and the paper's
    # finished cells are taken as they are: a second run trains nothing
    assert main(args_for(out, glue_dir, methods) + ["--no-train"]) == 0


def test_a_static_system_without_its_teacher_row_is_refused_before_training(tmp_path, glue_dir, capsys):
    out = tmp_path / "t1"
    assert main(args_for(out, glue_dir, "distilbert,full")) == 2  # the teacher row comes after its student
    assert "must be a row of --methods before it" in capsys.readouterr().err
    args = args_for(out, glue_dir, "pkd")
    args[args.index("pkd=method=pkd,teacher_row=full")] = "pkd=method=pkd"
    assert main(args) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert not out.exists()
