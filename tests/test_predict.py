import io
import json

import pytest

from metabert.data.files import DataError
from metabert.data.tasks import read_texts
from metabert.engine.policies import EntropyPolicy
from metabert.deploy.predict import predict_stream
from metabert.cli import main
from conftest import make_tiny


@pytest.fixture(scope="module")
def model():
    return make_tiny(("neg", "pos"), seed=0)


def run(model, content: bytes, fmt, columns=("text",), skip_bad=False, chunk=3):
    out = io.StringIO()
    rows = read_texts(io.BytesIO(content), fmt, list(columns), header=fmt != "jsonl", name="in", on_error="report")
    counts = predict_stream(model, rows, out,
                            EntropyPolicy(0.5), batch_size=2, skip_bad=skip_bad, name="in", chunk=chunk)
    return [json.loads(line) for line in out.getvalue().splitlines()], counts


def test_predictions_keep_input_order_across_chunks(model):
    texts = ["a", "a much longer text than the others in this file", "b c", "d", "e f g h", "i j k l m n o"]
    content = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    rows, counts = run(model, content, "jsonl")
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert counts == {"predicted": 6, "skipped": 0, "skipped_lines": []}
    for r in rows:
        assert r["label"] in ("neg", "pos") and 1 <= r["exit_layer"] <= 3
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_bad_rows_stop_or_are_counted(model):
    content = b"text\tx\ngood\t1\n\t2\nbroken\ncaf\xe9\t3\nfine\t4\n"
    with pytest.raises(DataError, match=r"in:3: empty or missing text"):
        run(model, content, "tsv")
    rows, counts = run(model, content, "tsv", skip_bad=True)
    assert [r["line"] for r in rows] == [2, 6]
    assert counts["skipped"] == 3 and counts["skipped_lines"] == [3, 4, 5]


def test_pairs_and_csv(model):
    rows, _ = run(model, b'a,b\n"x, y",z\nq,w\n', "csv", columns=("a", "b"))
    assert len(rows) == 2
    with pytest.raises(DataError, match="no text column 'c' in the header \\['a', 'b'\\]; name it with --text-columns"):
        run(model, b"a,b\nx,y\n", "csv", columns=("c",))


def test_predict_command(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    make_tiny().save_pretrained(ckpt)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n{"text": "world"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                 "--threshold", "0.3"]) == 0
    assert len(out.read_text().splitlines()) == 2
    # not calibrated, no threshold: the full model answers, with one warning line
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out)]) == 0
    assert [json.loads(line)["exit_layer"] for line in out.read_text().splitlines()] == [3, 3]
    assert "no calibrated policy, the full model" in capsys.readouterr().err
