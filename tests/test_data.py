import json

import pytest

from metabert.data import tasks as D
from metabert.commands.download_glue import write_task

OFFICIAL_ROWS = {
    ("sst2", "train"): 67349, ("sst2", "dev"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408,
    ("rte", "train"): 2490, ("rte", "dev"): 277,
    ("cola", "train"): 8551, ("cola", "dev"): 1043,
    ("qnli", "dev"): 5463, ("mnli", "dev"): 9815,
    ("qnli", "train"): 104743, ("mnli", "train"): 392702, ("mnli-mm", "dev"): 9832,
    ("qqp", "train"): 363846, ("qqp", "dev"): 40430,
}


def present(glue_dir):
    for (task, split), rows in OFFICIAL_ROWS.items():
        spec = D.GLUE_TASKS[task]
        if (glue_dir / spec.folder / spec.splits[split]).is_file():
            yield task, split, rows


def test_every_glue_file_reads_with_official_row_count(glue_dir):
    found = list(present(glue_dir))
    assert len(found) >= 10  # the shared folder has 10 files
    for task, split, rows in found:
        ds = D.load_glue(task, split, str(glue_dir))
        assert len(ds) == rows, (task, split)
        assert set(ex.label for ex in ds.examples) == set(range(len(D.GLUE_TASKS[task].labels)))
        pair = D.GLUE_TASKS[task].text_columns
        assert all((ex.text_pair is not None) == (len(pair) == 2) for ex in ds.examples)


def test_glue_quirks(glue_dir):
    mrpc = D.load_glue("mrpc", "train", str(glue_dir))
    assert not mrpc.examples[0].text.startswith("\ufeff")
    cola = D.load_glue("cola", "dev", str(glue_dir))  # no header, no final newline
    assert cola.examples[-1].text
    rte = D.load_glue("rte", "dev", str(glue_dir))
    assert rte.label_names == ("entailment", "not_entailment")


def test_missing_glue_dir_says_where_to_put_files(monkeypatch, tmp_path):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(D.DataError, match="download-glue"):
        D.load_glue("sst2", "train")
    with pytest.raises(D.DataError, match=r"SST-2/train.tsv: file not found.*GLUE_DIR"):
        D.load_glue("sst2", "train", str(tmp_path))


def test_unknown_task():
    with pytest.raises(D.DataError, match="unknown task 'sts'.*sst2"):
        D.get_task("sts")


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


SST2 = D.GLUE_TASKS["sst2"]


@pytest.mark.parametrize("content, message", [
    ("sentence\tlabel\ngood film\t1\nbad\n", r"bad.tsv:3: expected 2 columns, found 1"),
    ("sentence\tlabel\ngood film\t1\nmeh\t7\n", r"bad.tsv:3: unknown label '7'"),
    ("sentence\tlabel\n \t1\n", r"bad.tsv:2: empty text"),
    ("sentence\tlabel\ngood\t\n", r"bad.tsv:2: empty label"),
    ("sentence\tlabel\n", r"bad.tsv: no examples"),
    ("", r"bad.tsv: empty file"),
])
def test_bad_tsv_rows_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path, "bad.tsv", content)
    with pytest.raises(D.DataError, match=message):
        D.read_file(path, SST2)


def test_not_utf8_names_line(tmp_path):
    path = write(tmp_path, "bad.tsv", b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n", mode="wb")
    with pytest.raises(D.DataError, match=r"bad.tsv:3: not valid UTF-8"):
        D.read_file(path, SST2)


def test_missing_file(tmp_path):
    with pytest.raises(D.DataError, match="nope.tsv: file not found"):
        D.read_file(tmp_path / "nope.tsv", SST2)


def test_quotes_are_not_special_in_tsv(tmp_path):
    path = write(tmp_path, "q.tsv", 'sentence\tlabel\n"unbalanced quote\t1\nnext\t0\n')
    ds = D.read_file(path, SST2)
    assert [e.text for e in ds.examples] == ['"unbalanced quote', "next"]


@pytest.mark.parametrize("name, content", [
    ("d.tsv", "id\ttext\tother\tlabel\n1\tgreat\tx\tpos\n2\tawful\ty\tneg\n3\tfine\tz\tpos\n"),
    ("d.csv", 'id,text,other,label\n1,great,x,pos\n2,"awful, really",y,neg\n3,fine,z,pos\n'),
    ("d.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"text": "great", "label": "pos"}, {"text": "awful, really", "label": "neg"}, {"text": "fine", "label": "pos"}])),
])
def test_custom_formats(tmp_path, name, content):
    path = write(tmp_path, name, content)
    spec = D.custom_spec(path, ["text"], "label")
    labels = D.infer_labels(path, spec)
    assert labels == ("neg", "pos")
    ds = D.read_file(path, spec, labels)
    assert [e.label for e in ds.examples] == [1, 0, 1]
    assert ds.examples[1].text.startswith("awful")


def test_custom_pairs_and_errors(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"a": "x", "b": "y", "y": 1}\n{"a": "x2", "b": "y2", "y": 0}\n')
    spec = D.custom_spec(path, ["a", "b"], "y")
    ds = D.read_file(path, spec, D.infer_labels(path, spec))
    assert ds.examples[0].text_pair == "y" and ds.examples[0].label == 1
    bad = write(tmp_path, "b.jsonl", '{"a": "x", "y": 1}\n{"a": "x", "y": 1\n')
    with pytest.raises(D.DataError, match=r"b.jsonl:2: invalid JSON"):
        D.read_file(bad, D.custom_spec(bad, ["a"], "y"), ("0", "1"))
    missing = write(tmp_path, "m.jsonl", '{"a": "x"}\n')
    with pytest.raises(D.DataError, match=r"m.jsonl:1: missing field 'y'"):
        D.read_file(missing, D.custom_spec(missing, ["a"], "y"), ("0", "1"))
    blank = write(tmp_path, "e.jsonl", '{"a": "x", "y": 1}\n\n{"a": "z", "y": 0}\n')
    with pytest.raises(D.DataError, match=r"e.jsonl:2: empty line"):
        D.read_file(blank, D.custom_spec(blank, ["a"], "y"), ("0", "1"))
    header = write(tmp_path, "h.tsv", "text\tlabel\nx\t1\n")
    with pytest.raises(D.DataError, match=r"h.tsv:1: no label column 'gold'"):
        D.read_file(header, D.custom_spec(header, ["text"], "gold"), ("0", "1"))
    one = write(tmp_path, "one.tsv", "text\tlabel\nx\t1\ny\t1\n")
    with pytest.raises(D.DataError, match="need at least 2"):
        D.infer_labels(one, D.custom_spec(one, ["text"], "label"))
    with pytest.raises(D.DataError, match="format"):
        D.custom_spec(tmp_path / "x.txt", ["text"], "label")


def test_split_off_and_subsample_are_seeded_and_disjoint():
    ds = D.Dataset([D.Example(str(i), None, i % 2) for i in range(100)], ("0", "1"), "mem")
    rest, held, idx = D.split_off(ds, round(0.1 * len(ds)), seed=5)
    assert len(held) == 10 and len(rest) == 90
    assert not {e.text for e in held.examples} & {e.text for e in rest.examples}
    assert D.split_off(ds, round(0.1 * len(ds)), seed=5)[2] == idx != D.split_off(ds, round(0.1 * len(ds)), seed=6)[2]
    sub = D.subsample(rest, 20, seed=1)
    assert len(sub) == 20 and [e.text for e in sub.examples] == [e.text for e in D.subsample(rest, 20, 1).examples]


def test_download_writer_round_trips(tmp_path):
    rows = {"train": [{"idx": 0, "sentence1": "a b", "sentence2": "c\td", "label": 0},
                      {"idx": 1, "sentence1": "e", "sentence2": "f", "label": 1}],
            "dev": [{"idx": 0, "sentence1": "g", "sentence2": "h", "label": 1}]}
    write_task("rte", rows, ["entailment", "not_entailment"], tmp_path)
    train = D.load_glue("rte", "train", str(tmp_path))
    assert [(e.text, e.text_pair, e.label) for e in train.examples] == [("a b", "c d", 0), ("e", "f", 1)]
    cola = {"train": [{"sentence": "ok .", "label": 1}, {"sentence": "bad .", "label": 0}], "dev": []}
    write_task("cola", cola, ["0", "1"], tmp_path)
    assert [e.label for e in D.load_glue("cola", "train", str(tmp_path)).examples] == [1, 0]


def test_detect_columns_by_name(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": 1, "Sentence1": "a", "sentence2": "b", "label": "x"}\n')
    assert D.detect_columns(pairs) == (("Sentence1", "sentence2"), "label")
    single = tmp_path / "single.csv"
    single.write_text("idx,sentence,text,label\n1,a,b,0\n")
    assert D.detect_columns(single) == (("text",), "label")  # text before sentence
    assert D.detect_columns(single, ["sentence"], "idx") == (("sentence",), "idx")  # flags override
    bare = tmp_path / "bare.tsv"
    bare.write_text("a\tb\n")
    with pytest.raises(D.DataError, match=r"bare.tsv:1: no text column found among the columns \['a', 'b'\]"):
        D.detect_columns(bare)


def test_label_order_is_stable_and_numeric_where_labels_are_numbers():
    assert D.label_order(["2", "10", "1", "2"]) == ["1", "2", "10"]
    assert D.label_order(["pos", "neg", "neutral"]) == D.label_order(["neutral", "pos", "neg"]) == ["neg", "neutral", "pos"]
