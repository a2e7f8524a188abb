"""The one file reader (metabert.data.files): quoted CSV fields across lines, BOMs, CRLF, blank
lines, bad bytes and bad rows, raised or reported, and the text columns a checkpoint reads."""

import io
import json

import pytest

from metabert.data.files import DataError, file_format, read_rows, read_table
from metabert.data.tasks import GLUE_TASKS, TaskSpec, read_texts, text_columns_for, texts_of


def rows(content: bytes, fmt: str, **kwargs) -> list:
    return [(r.line, r.values, r.error) for r in read_rows(io.BytesIO(content), fmt, name="in", **kwargs)]


def test_a_quoted_csv_field_may_span_lines_and_keeps_its_first_line_number():
    content = b'text,label\n"first line\nsecond line",pos\nnext,neg\n"a, b",pos\n'
    assert rows(content, "csv") == [(1, ["text", "label"], None), (2, ["first line\nsecond line", "pos"], None),
                                    (4, ["next", "neg"], None), (5, ["a, b", "pos"], None)]


def test_an_unterminated_quote_is_an_error_not_a_row():
    with pytest.raises(DataError, match=r"in:3: unreadable row"):
        rows(b'text,label\nok,pos\n"never closed,neg\n', "csv")


def test_bom_crlf_and_trailing_blank_lines():
    content = "\ufefftext\tlabel\r\ngood\t1\r\nbad\t0\r\n\r\n\n".encode()
    assert rows(content, "tsv") == [(1, ["text", "label"], None), (2, ["good", "1"], None), (3, ["bad", "0"], None)]
    assert rows("\ufeff{\"text\": \"x\"}\r\n\n".encode(), "jsonl") == [(1, {"text": "x"}, None)]
    assert rows(b"one\r\ntwo\n\n", "txt") == [(1, ["one"], None), (2, ["two"], None)]


def test_a_blank_line_between_rows_is_an_error_or_a_reported_row():
    content = b"text\tlabel\na\t1\n\nb\t0\n"
    with pytest.raises(DataError, match=r"in:3: empty line"):
        rows(content, "tsv")
    assert rows(content, "tsv", on_error="report")[2] == (3, None, "empty line")


def test_tsv_quotes_are_plain_characters():
    assert rows(b'sentence\tlabel\n"unbalanced\t1\n', "tsv")[1] == (2, ['"unbalanced', "1"], None)


def test_bad_bytes_are_reported_on_their_line_and_reading_goes_on():
    content = b"text\tlabel\ncaf\xe9\t1\nfine\t0\n"
    got = rows(content, "tsv", on_error="report")
    assert got[1][0] == 2 and "not valid UTF-8" in got[1][2]
    assert got[2] == (3, ["fine", "0"], None)


def test_read_table_selects_columns_by_name_or_position_and_checks_the_shape():
    content = b"id,text,label\n1,hello,pos\n2,short\n3,bye,neg\n"
    got = [(r.line, r.values, r.error) for r in read_table(io.BytesIO(content), "csv", ["text", "label"], name="in",
                                                          on_error="report", roles=("text", "label"))]
    assert got == [(2, ["hello", "pos"], None), (3, None, "expected 3 columns, found 2"), (4, ["bye", "neg"], None)]
    with pytest.raises(DataError, match=r"in:1: no label column 'gold' in the header \['id', 'text', 'label'\]"):
        list(read_table(io.BytesIO(content), "csv", ["text", "gold"], name="in", roles=("text", "label")))


def test_file_format_names_the_flag():
    assert file_format("x.TSV") == "tsv" and file_format("x.txt") == "txt" and file_format("x", "csv") == "csv"
    with pytest.raises(DataError, match="--format"):
        file_format("data.parquet")


def test_a_glue_checkpoint_reads_its_own_dev_file_its_test_file_and_a_jsonl_by_name(tmp_path):
    sst2 = GLUE_TASKS["sst2"]
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\na fine film \t1\n")
    test = tmp_path / "test.tsv"
    test.write_text("index\tsentence\n0\ta dull film \n")
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"sentence": "so so"}\n')
    assert [r.values for r in texts_of(dev, sst2)] == [["a fine film ", None]]
    assert [r.values for r in texts_of(test, sst2)] == [["a dull film ", None]]
    assert [r.values for r in texts_of(lines, sst2)] == [["so so", None]]


def test_headerless_cola_is_read_by_position_and_pairs_need_two_columns(tmp_path):
    cola = tmp_path / "dev.tsv"
    cola.write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\nbc01\t0\t*\tThey drank the pub.\n")
    assert text_columns_for(GLUE_TASKS["cola"], cola, "tsv") == ((3,), False)
    assert [r.values[0] for r in texts_of(cola, GLUE_TASKS["cola"])][1] == "They drank the pub."
    txt = tmp_path / "t.txt"
    txt.write_text("one\n")
    with pytest.raises(DataError, match="sentence pairs"):
        texts_of(txt, GLUE_TASKS["rte"])


def test_a_custom_checkpoint_reads_its_own_column_names_and_says_what_is_missing(tmp_path):
    spec = TaskSpec("custom", "", ("review",), "stars", labels=("1", "5"), format="csv")
    ok = tmp_path / "new.csv"
    ok.write_text('review,other\n"long,\nreview",x\n')
    assert [r.values for r in texts_of(ok, spec)] == [["long,\nreview", None]]
    bad = tmp_path / "other.csv"
    bad.write_text("comment,x\nhello,1\n")
    with pytest.raises(DataError, match=r"no text column found among the columns \['comment', 'x'\].*reads \['review'\]"):
        texts_of(bad, spec)


def test_empty_texts_are_bad_rows():
    got = list(read_texts(io.BytesIO(json.dumps({"text": " "}).encode() + b"\n"), "jsonl", ["text"], False, "in",
                          on_error="report"))
    assert got[0].error == "empty or missing text in 'text'"


def test_a_stream_is_read_by_the_names_its_first_line_holds():
    """stdin: the first line is read ahead to find the columns, then read again."""
    sst2 = GLUE_TASKS["sst2"]
    stream = io.BytesIO(b'{"text": "a fine film"}\n{"text": "dull"}\n')
    assert [r.values[0] for r in texts_of(stream, sst2, "jsonl", name="-")] == ["a fine film", "dull"]
    stream = io.BytesIO(b'{"sentence": "by the task\'s own name"}\n')
    assert [r.values[0] for r in texts_of(stream, sst2, "jsonl", name="-")] == ["by the task's own name"]
