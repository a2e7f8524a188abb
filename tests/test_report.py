"""`metabert report` over a results folder laid out as benchmarks/foundation_results.sh writes it."""

from metabert.cli import main


def test_report_page_with_a_seed_spread(tmp_path, glue_dir):
    root = tmp_path / "results"
    common = ["--task", "rte", "--model", "tiny", "--epochs", "1", "--max-train-samples", "32", "--batch-size", "16",
              "--data-dir", str(glue_dir), "--no-progress"]
    assert main(["train", *common, "--seed", "42", "--output", str(root / "rte")]) == 0
    assert main(["train", *common, "--seed", "1", "--output", str(root / "seeds" / "rte-seed1")]) == 0
    assert main(["evaluate", "--checkpoint", str(root / "rte"), "--task", "rte", "--data-dir", str(glue_dir),
                 "--thresholds", "0,0.5", "--output", str(root / "rte.sweep.json")]) == 0
    page = tmp_path / "RESULTS.md"
    assert main(["report", str(root), "--output", str(page)]) == 0
    text = page.read_text()
    assert "| rte | accuracy | 32 | 1 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| rte | 5e-05 |"))
    assert "(seed 42)" in row and "(seed 1)" in row and "±" in row
    assert "20% of each training file is held out" in text and "one seed per task (rte: 42)" in text
    assert (tmp_path / "RESULTS.png").read_bytes()[:4] == b"\x89PNG"
