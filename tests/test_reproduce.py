"""`metabert reproduce` on the tiny model and small real slices: tables, plots, resumption."""

import json

import pytest
import torch

from metabert.cli import main
from metabert.recipes.reproduce.stats import measure


def test_reproduce_writes_table_and_figures_and_resumes(tmp_path, glue_dir, capsys):
    out = tmp_path / "t2"
    args = ["reproduce", "--tasks", "rte", "--methods", "joint,two-stage,meta,joint-matched,meta-adam",
            "--variant", "meta-adam=method=meta,meta_optimizer=adam,meta_lr=1e-3", "--seeds", "2",
            "--model", "tiny", "--epochs", "3", "--task-epochs", "rte=2", "--task-learning-rate", "rte=2e-3,sst2=1e-4", "--max-train-samples", "48", "--calibration-fraction", "0.2", "--batch-size", "16",
            "--meta-support-size", "4", "--data-dir", str(glue_dir), "--output", str(out), "--no-progress"]
    assert main(args) == 0
    written = json.loads((out / "table2.json").read_text())
    table = written["rows"]
    assert list(table) == ["joint", "two-stage", "meta", "joint-matched", "meta-adam"]  # the order of --methods
    diffs = written["minus_control"]  # every row against joint-matched, seed by seed
    assert written["control"] == "joint-matched" and "joint-matched" not in diffs
    for method in diffs:
        d = diffs[method]["rte"]["last_exit"]
        own = [json.loads((out / "rte" / name / f"seed{k}" / "result.json").read_text())["last_exit"]
               for name in (method, "joint-matched") for k in range(2)]
        assert d["seeds"] == 2 and abs(d["mean"] - (own[0] + own[1] - own[2] - own[3]) / 2) < 1e-9
    variant = json.loads((out / "rte" / "meta-adam" / "seed1" / "result.json").read_text())["config"]
    assert (variant["method"], variant["meta_optimizer"], variant["meta_lr"]) == ("meta", "adam", 1e-3)
    cell = table["meta"]["rte"]
    assert cell["seeds"] == 2 and len(cell["per_exit"]) == 3
    assert len(cell["last_exit"]) == 2  # mean and standard deviation
    text = (out / "table2.md").read_text()
    assert "- `meta-adam`: method=meta, meta_optimizer=adam, meta_lr=0.001" in text
    assert "## last exit" in text and "The paper's Table II" in text and "1.5x layer speed-up" in text
    assert "## Against the matched-compute control `joint-matched`, seed by seed" in text
    log = [json.loads(line) for line in (out / "rte" / "meta" / "seed1" / "checkpoint" / "log.jsonl").open()]
    final = json.loads((out / "rte" / "meta" / "seed1" / "result.json").read_text())["final_epoch"]
    assert final == {"epoch": 2, "last_exit": log[-1]["dev_last_exit"], "mean_over_exits": log[-1]["dev_mean_over_exits"]}
    assert "## last exit after the final epoch" in text
    assert (out / "fig2_rte.png").read_bytes()[:4] == b"\x89PNG"
    result = json.loads((out / "rte" / "joint" / "seed0" / "result.json").read_text())
    assert result["calibrated_on"].startswith("the held-out 20%")
    assert result["epochs"] == 2  # --task-epochs overrides --epochs
    assert result["config"]["learning_rate"] == 2e-3  # and --task-learning-rate --learning-rate
    stamp = (out / "rte" / "joint" / "seed0" / "result.json").stat().st_mtime
    assert main(args) == 0  # every cell done: nothing is trained again
    assert (out / "rte" / "joint" / "seed0" / "result.json").stat().st_mtime == stamp
    more = [a if a != "2" or args[i - 1] != "--seeds" else "3" for i, a in enumerate(args)]
    assert main([*more, "--no-train"]) == 0  # tabulate what is finished, train nothing
    assert not (out / "rte" / "joint" / "seed2").exists()
    assert "Incomplete: 10 of 15 cells finished" in (out / "table2.md").read_text()
    assert main([*args, "--no-train", "--pair", "meta=meta-adam"]) == 0  # an ablation pair, seed by seed
    pair = json.loads((out / "table2.json").read_text())["pairs"]["meta − meta-adam"]["rte"]["last_exit"]
    own = {(name, k): json.loads((out / "rte" / name / f"seed{k}" / "result.json").read_text())["last_exit"]
           for name in ("meta", "meta-adam") for k in range(2)}
    per_seed = [own["meta", k] - own["meta-adam", k] for k in range(2)]
    assert pair["seeds"] == 2 and pair["wins"] == sum(d > 0 for d in per_seed)
    assert [k for k, _ in pair["per_seed"]] == [0, 1] and [d for _, d in pair["per_seed"]] == per_seed
    assert abs(pair["mean"] - sum(per_seed) / 2) < 1e-9
    assert "## Pairs asked for (--pair), seed by seed" in (out / "table2.md").read_text()
    full = {name: (out / name).read_bytes() for name in ("table2.md", "table2.json", "fig2_rte.png")}
    narrow = [a if a != "joint,two-stage,meta,joint-matched,meta-adam" else "meta" for a in args]
    assert main([*narrow, "--no-train", "--summary", str(out / "pages" / "meta-only")]) == 0  # some rows of a shared folder
    assert {name: (out / name).read_bytes() for name in full} == full  # the full table's files are left as they are
    assert list(json.loads((out / "pages" / "meta-only" / "table2.json").read_text())["rows"]) == ["meta"]
    assert (out / "pages" / "meta-only" / "fig2_rte.png").exists()
    changed = [a.replace("meta_lr=1e-3", "meta_lr=1e-2") for a in args]  # a finished cell made with other options is not reused
    assert main(changed) == 2
    assert "meta-adam/seed0/result.json was made with other options (meta_lr)" in capsys.readouterr().err


def test_reproduce_rejects_bad_task_epochs(tmp_path, capsys):
    base = ["reproduce", "--tasks", "rte,mrpc", "--model", "tiny", "--output", str(tmp_path / "x")]
    for extra, message in [(["--task-epochs", "rte:2"], "TASK=N"),
                           (["--task-seeds", "rte=0"], "--task-seeds: expected TASK=N"),
                           (["--task-epochs", "sst3=2"], "unknown task 'sst3'"),
                           (["--task-learning-rate", "rte=-1e-4"], "--task-learning-rate: expected TASK=VALUE"),
                           (["--task-learning-rate", "rte=fast"], "--task-learning-rate: expected TASK=VALUE"),
                           (["--methods", "joint,two-stage", "--task-epochs", "mrpc=1"], "at least 2 epochs"),
                           (["--variant", "v=meta_lr=1"], "say which method"),
                           (["--methods", "v", "--variant", "v=method=meta,meta_lr=x"], "meta_lr needs float"),
                           (["--methods", "v", "--variant", "v=method=meta,meta_share_gradients=maybe"],
                            "meta_share_gradients needs bool"),
                           (["--methods", "v", "--variant", "v=method=meta,meta_share_gradients=true,meta_order=second"],
                            "share_gradients needs order='first'"),
                           (["--methods", "joint,meta", "--pair", "meta"], "--pair: expected ROW=REFERENCE"),
                           (["--methods", "joint,meta", "--pair", "meta=meta"], "two different rows"),
                           (["--methods", "joint,meta", "--pair", "meta=last"], "'last' is not a row of --methods")]:
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any training


def test_task_seeds_set_each_tasks_cells(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["reproduce", "--tasks", "rte,mrpc", "--methods", "joint", "--seeds", "2", "--task-seeds", "mrpc=1",
                 "--model", "tiny", "--no-train", "--no-progress", "--output", str(out)]) == 0
    text = (out / "table2.md").read_text()
    assert "Not yet run: rte/joint/seed0, rte/joint/seed1, mrpc/joint/seed0." in text


def test_table_one_rows_exit_rules_and_a_static_model(tmp_path, glue_dir):
    out = tmp_path / "t1"
    args = ["reproduce", "--tasks", "mrpc", "--methods", "pabee,fastbert,static2,full,pabee-entropy", "--seeds", "1", "--model", "tiny",
            "--epochs", "2", "--max-train-samples", "48", "--calibration-fraction", "0.3", "--batch-size", "16",
            "--variant", "pabee=method=weighted,policy=patience",
            "--variant", "fastbert=method=distill,policy=norm-entropy",
            "--variant", "static2=method=last,num_layers=2", "--variant", "full=method=last",
            "--variant", "pabee-entropy=method=weighted,policy=entropy", "--speedups", "1.2,1.5,2", "--title", "Table I here", "--paper", "table1",
            "--data-dir", str(glue_dir), "--output", str(out), "--no-progress"]
    assert main(args) == 0
    pabee = json.loads((out / "mrpc" / "pabee" / "seed0" / "result.json").read_text())
    assert pabee["policy"] == "patience" and pabee["config"]["method"] == "weighted"
    reached = [e for e in pabee["early_exit"].values() if "score" in e]
    assert reached and all(e["patience"] >= 1 for e in reached)
    by_entropy = json.loads((out / "mrpc" / "pabee-entropy" / "seed0" / "result.json").read_text())
    assert by_entropy["trained_by"] == str(out / "mrpc" / "pabee" / "seed0" / "checkpoint")  # PABEE's model, not trained again
    assert not (out / "mrpc" / "pabee-entropy" / "seed0" / "checkpoint").exists()
    assert by_entropy["per_exit"] == pabee["per_exit"] and by_entropy["policy"] == "entropy"
    assert by_entropy["train_seconds"] == pabee["train_seconds"]
    static = json.loads((out / "mrpc" / "static2" / "seed0" / "result.json").read_text())
    assert len(static["per_exit"]) == 2  # two of tiny's three layers
    assert static["early_exit"]["1.5"] == {"score": static["last_exit"], "dev_layer_speedup": 1.5, "static": True}
    assert "error" in static["early_exit"]["2"]  # 1.5x is all a 2-of-3-layer model gives
    full = json.loads((out / "mrpc" / "full" / "seed0" / "result.json").read_text())
    assert len(full["per_exit"]) == 3 and all("error" in e for e in full["early_exit"].values())  # untrained heads
    assert measure(full, "mean_over_exits") is None and measure(static, "mean_over_exits") is None
    assert measure(static, "at_1.5x") == static["last_exit"] and measure(full, "last_exit") == full["last_exit"]
    made_before = {**full, "early_exit": {"1.5": {"score": 50.0, "dev_layer_speedup": 1.6}}}  # by an entropy rule
    assert measure(made_before, "at_1.5x") is None
    text = (out / "table2.md").read_text()
    assert text.startswith("# Table I here\n") and "- `pabee` (the paper's PABEE): method=weighted, policy=patience" in text
    assert "| pabee (PABEE; 3 layers) |" in text and "| static2 (2 layers) |" in text  # paper's name, our depth
    assert "mnli (no MNLI/train.tsv in the GLUE folder)" in text  # the paper's columns we cannot run
    assert "## The paper's Table I " in text and "| PABEE | 86.2 |" in text and "Table II" not in text
    assert "(1.50x)" in text and "early exit at 1.2x layer speed-up" in text
    assert "(one seed)" in text and "± 0.0" not in text  # one seed shows no spread, not a zero one
    mean_table = text.split("## mean over all exits")[1].split("##")[0]
    assert "| full (3 layers) | n/a | n/a |" in mean_table and "| static2 (2 layers) | n/a | n/a |" in mean_table
    assert "A static row" in text


def test_finished_cell_made_before_an_option_existed_is_reused(tmp_path):
    import pytest

    from metabert.recipes.reproduce.cells import run_cell
    from metabert.training.config import TrainConfig

    base = TrainConfig(task="rte", output="unused", model="tiny", epochs=2)
    cell = tmp_path / "moved" / "rte" / "joint" / "seed0"
    cell.mkdir(parents=True)
    stored = {**base.to_dict(), "method": "joint", "seed": 0, "output": "/elsewhere/checkpoint"}
    del stored["head_init"]  # an option added after the cell was made, at its default
    (cell / "result.json").write_text(json.dumps({"config": stored, "last_exit": 50.0}))
    root = tmp_path / "moved"
    assert run_cell(base, "rte", "joint", 0, root, [1.5], train_missing=False)["last_exit"] == 50.0
    with pytest.raises(ValueError, match=r"other options \(head_init\)"):
        run_cell(base.replace(head_init="pooler"), "rte", "joint", 0, root, [1.5],
                 train_missing=False)


def test_a_cell_with_the_same_options_is_taken_from_another_results_folder(tmp_path):
    from metabert.recipes.reproduce.cells import run_cell
    from metabert.training.config import TrainConfig

    base = TrainConfig(task="mrpc", output="unused", model="tiny", epochs=2)
    other = tmp_path / "table2"
    cell = other / "mrpc" / "two-stage" / "seed1"
    cell.mkdir(parents=True)
    stored = {**base.to_dict(), "method": "two-stage", "seed": 1, "output": str(cell / "checkpoint")}
    (cell / "result.json").write_text(json.dumps({"config": stored, "method": "two-stage", "last_exit": 70.0,
                                                  "early_exit": {"1.5": {"score": 69.0}}}))
    root = tmp_path / "table1"
    deebert = {"method": "two-stage", "policy": "entropy"}
    # another exit rule, seed, training option or a speed-up the cell did not measure: nothing is taken
    assert run_cell(base, "mrpc", "pabee", 1, root, [1.5], overrides={"method": "two-stage", "policy": "patience"},
                    train_missing=False, reuse=[other]) is None
    assert run_cell(base, "mrpc", "deebert", 0, root, [1.5], overrides=deebert, train_missing=False,
                    reuse=[other]) is None
    assert run_cell(base, "mrpc", "deebert", 1, root, [1.5], task_options={"learning_rate": 1e-4},
                    overrides=deebert, train_missing=False, reuse=[other]) is None
    assert run_cell(base, "mrpc", "deebert", 1, root, [1.5, 2], overrides=deebert, train_missing=False,
                    reuse=[other]) is None
    assert not root.exists()
    done = run_cell(base, "mrpc", "deebert", 1, root, [1.5], overrides=deebert, train_missing=False, reuse=[other])
    assert (done["method"], done["last_exit"], done["reused_from"]) == ("deebert", 70.0, str(cell))
    assert json.loads((root / "mrpc" / "deebert" / "seed1" / "result.json").read_text()) == done


class Cut(Exception):
    """Stands for a run killed right after a mid-epoch state save."""


def test_a_cell_cut_short_resumes_from_its_saved_state(tmp_path, glue_dir, monkeypatch):
    from dataclasses import asdict

    import metabert.training.trainer as trainer
    from safetensors.torch import load_file

    def args(out):
        return ["reproduce", "--tasks", "rte", "--methods", "joint", "--seeds", "1", "--model", "tiny", "--epochs", "2",
                "--max-train-samples", "40", "--calibration-fraction", "0.2", "--batch-size", "8",
                "--save-every", "3", "--data-dir", str(glue_dir),
                "--output", str(out), "--no-progress"]

    assert main(args(tmp_path / "straight")) == 0
    saves, original = [], trainer.save_state

    def save_then_die(directory, config, model, optimizers, scheduler, run):
        original(directory, config, model, optimizers, scheduler, run)
        saves.append(asdict(run))
        if run.epoch == 1 and run.batch > 0:  # in the second epoch, mid-way
            raise Cut

    monkeypatch.setattr(trainer, "save_state", save_then_die)
    with pytest.raises(Cut):
        main(args(tmp_path / "cut"))
    monkeypatch.setattr(trainer, "save_state", original)
    cell = tmp_path / "cut" / "rte" / "joint" / "seed0"
    assert not (cell / "result.json").exists() and (cell / "checkpoint.state" / "state.pt").is_file()
    assert main(args(tmp_path / "cut")) == 0  # the same command again picks the cell up where it stopped
    result = json.loads((cell / "result.json").read_text())
    straight = json.loads((tmp_path / "straight" / "rte" / "joint" / "seed0" / "result.json").read_text())
    assert result["resumed"] is True and straight["resumed"] is False
    assert result["per_exit"] == straight["per_exit"]
    a = load_file(tmp_path / "straight" / "rte" / "joint" / "seed0" / "checkpoint" / "model.safetensors")
    b = load_file(cell / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (cell / "checkpoint" / "log.jsonl").open()]
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["resumed_at_batch"] == saves[-1]["batch"]
    # the cut epoch's examples and time before the cut are counted: all 40 examples, not those after it
    assert log[1]["examples_per_second"] * log[1]["train_seconds"] == pytest.approx(40)
    assert log[1]["train_seconds"] > saves[-1]["epoch_seconds"]


def _cell(task, method, seed, score, static=False):
    """A finished cell's result as ``run_cell`` writes it, scoring ``score`` everywhere."""
    config = {"method": "last" if static else "joint", "num_layers": 3 if static else None}
    early = {"2": {"score": score, "dev_layer_speedup": 2.0, **({"static": True} if static else {})}}
    return {"task": task, "method": method, "seed": seed, "config": config, "per_exit": [score] * (3 if static else 6),
            "last_exit": score, "mean_over_exits": score, "early_exit": early, "train_seconds": 1.0}


@pytest.mark.parametrize("case", ["holds", "does not hold", "not settled"])
def test_the_papers_ordering_is_judged_from_paired_seeds(case):
    """Table I's verdict: the paper's two best rows among ours (MetaBERT, then GAML-BERT) against each
    other and against our best other row, seed by seed at 2x; written from the standings alone."""
    from metabert.recipes.reproduce.pages import render_ordering
    from metabert.recipes.reproduce.stats import aggregate, ordering

    tasks = ["rte", "mrpc"]
    offsets = {"holds": {"meta": 3.0, "gaml": 1.5}, "does not hold": {"meta": -2.0, "gaml": 1.0},
               "not settled": {"meta": 0.5, "gaml": 0.0}}[case]
    results = []
    for task in tasks:
        for seed, noise in enumerate([0.0, 0.4, -0.3]):
            results.append(_cell(task, "pabee", seed, 60.0 + noise))
            results.append(_cell(task, "bert-3l", seed, 55.0, static=True))
            results.append(_cell(task, "bert-6l", seed, 70.0, static=True))  # the full model: no 2x figure
            results[-1]["early_exit"] = {"2": {"error": "static model: 1.00x < 2x"}}
            for row, offset in offsets.items():
                results.append(_cell(task, row, seed, 60.0 + offset + (noise if case == "not settled" else 0.1 * seed)))
    table = aggregate(results, [2.0])
    found = ordering(results, table, tasks, [2.0], "table1")
    assert (found["first"], found["second"], found["best_other"]) == ("meta", "gaml", "pabee")
    assert found["key"] == "at_2x" and "bert-6l" not in found["here_mean"]
    text = "\n".join(render_ordering(found, tasks))
    verdict = {"holds": "The paper's ordering (MetaBERT, then GAML-BERT, then the rest) holds here.",
               "does not hold": "The paper's ordering does not hold here: meta is behind gaml",
               "not settled": "These seeds do not settle the paper's ordering"}[case]
    assert verdict in text
    for other in {"holds", "does not hold", "not settled"} - {case}:
        assert {"holds": "holds here.", "does not hold": "does not hold here",
                "not settled": "do not settle"}[other] not in text
    assert "| meta − gaml |" in text and "(3 seeds)" in text
