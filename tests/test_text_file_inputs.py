"""`layerwise compare --task hf:DIR --data FILE` on files and checkpoints a user really has: a header naming a
column twice, a header and no rows, a cut weights file, a --max-length past the model's positions, rare
classes, cells pandas would re-type, a byte-order mark, latin-1 bytes. Each is read right or refused in one
line naming the flag, before anything is tokenized or trained."""

import importlib.util
import json
import re
import shutil

import pytest
import torch

from layerwise import cli
from layerwise.tasks import text_files
from layerwise.tasks.hf_checkpoint import HFSpec, hf_task, read_checkpoint
from layerwise.tasks.pretrained import minilm_path, minilm_tokenizer
from layerwise.tasks.text_files import read_labelled_texts

POSITIONS = 64
"""The tiny checkpoint's max_position_embeddings."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-layer BERT of width 8 with 64 positions and the MiniLM tokenizer (model_max_length 512), saved."""
    import transformers

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = transformers.BertConfig(
        vocab_size=minilm_tokenizer().vocab_size,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=POSITIONS,
    )
    transformers.BertModel(config).save_pretrained(folder)
    minilm_tokenizer().save_pretrained(folder)
    return folder


def _copy(checkpoint, to):
    shutil.copytree(checkpoint, to)
    return to


def _rows(n=40, labels=("neg", "pos")):
    return [(f"a {('bad', 'good')[i % 2]} day {i}", labels[i % 2]) for i in range(n)]


def _csv(path, rows, header="text,label"):
    path.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n")
    return path


@pytest.fixture
def nothing_tokenized(monkeypatch):
    """Tokenizing a data file fails the test: every refusal here comes before it (and so before any training)."""

    def tokenize(*args, **kwargs):
        raise AssertionError("the data file was tokenized")

    monkeypatch.setattr(text_files, "tokenize", tokenize)


def _refused(capsys, tmp_path, checkpoint, data, *flags):
    """The one line ``compare`` prints when it refuses ``data`` on ``checkpoint``; it wrote nothing."""
    out = tmp_path / "out"
    argv = ["compare", "--task", f"hf:{checkpoint}", "--data", str(data), "--methods", "baseline"]
    code = cli.main([*argv, "--budget", "steps", "--quick", "--no-progress", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("layerwise compare: error: "), err
    assert not out.exists()  # no run record, no token cache
    return err[len("layerwise compare: error: ") :].rstrip("\n")


# item 1: a header naming a column twice (pandas would rename the second `text.1` and train on the first)


@pytest.mark.parametrize("header", ["text,text,label", "text,label,label"])
def test_a_header_naming_the_text_or_label_column_twice_is_refused(tmp_path, capsys, nothing_tokenized, header):
    rows = [(text, f"other {i}", label) if header.count("text") == 2 else (text, label, label)
            for i, (text, label) in enumerate(_rows())]  # fmt: skip
    data = _csv(tmp_path / "twice.csv", rows, header)
    twice = "text" if header.count("text") == 2 else "label"
    message = _refused(capsys, tmp_path, minilm_path(), data, "--max-length", "16")
    assert message == (
        f"--data: {data} names the column(s) [{twice!r}] more than once (its columns: {header.split(',')}); "
        "it needs one text column and one label column, each named once (--text-column, --label-column)"
    )


def test_the_name_pandas_gives_a_second_column_is_not_a_column(tmp_path):
    data = _csv(tmp_path / "twice.csv", [("a", "b", "pos"), ("c", "d", "neg")], "text,text,label")
    with pytest.raises(ValueError, match=r"^--text-column: 'text.1' is not a column of .*\['text', 'text', 'label'\]"):
        read_labelled_texts(data, "text.1", "label")


def test_a_column_the_job_does_not_read_may_be_named_twice(tmp_path):
    data = _csv(tmp_path / "notes.csv", [("n", "m", text, label) for text, label in _rows()], "note,note,text,label")
    table = read_labelled_texts(data, "text", "label")
    assert table.texts[:2] == ("a bad day 0", "a good day 1") and table.classes == ("neg", "pos")


def test_a_parquet_file_naming_the_text_column_twice_is_refused(tmp_path):
    if importlib.util.find_spec("pyarrow") is None:
        pytest.skip("parquet needs pyarrow")
    import pyarrow
    import pyarrow.parquet

    columns = [pyarrow.array(["a", "b"]), pyarrow.array(["c", "d"]), pyarrow.array(["pos", "neg"])]
    data = tmp_path / "twice.parquet"
    pyarrow.parquet.write_table(pyarrow.table(columns, names=["text", "text", "label"]), data)
    with pytest.raises(ValueError, match=r"^--data: .* names the column\(s\) \['text'\] more than once"):
        read_labelled_texts(data, "text", "label")


# item 10: a file with no rows (an IndexError), and the other ways a file holds too little


def test_a_csv_with_a_header_and_no_rows_is_refused(tmp_path, capsys, nothing_tokenized):
    data = tmp_path / "header-only.csv"
    data.write_text("text,label\n")
    message = _refused(capsys, tmp_path, minilm_path(), data, "--max-length", "16")
    assert message == f"--data: {data} holds no rows (only a header); it needs a row per text, with its label"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "is empty; it needs a header row naming its columns"),
        ("blank.csv", "\n\n", "is empty; it needs a header row naming its columns"),
        ("empty.jsonl", "", "holds no rows (only nothing)"),
    ],
)
def test_an_empty_file_is_refused(tmp_path, name, content, message):
    data = tmp_path / name
    data.write_text(content)
    with pytest.raises(ValueError, match=rf"^--data: {data} {re.escape(message)}"):
        read_labelled_texts(data, "text", "label")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("x", "pos")] * 8, "--label-column: 'label' of {data} holds one class ('pos'); a classifier needs two"),
        ([*_rows(8), ("no label", "")], "--label-column: 1 row(s) of {data} have no 'label'"),
        ([*_rows(8), ("", "pos")], "--text-column: 1 row(s) of {data} have no 'text'"),
    ],
)
def test_one_class_or_empty_cells_are_refused(tmp_path, rows, message):
    data = _csv(tmp_path / "data.csv", rows)
    with pytest.raises(ValueError) as caught:
        read_labelled_texts(data, "text", "label")
    assert str(caught.value).startswith(message.format(data=data))


# item 11: a truncated or corrupt weights file (a SafetensorError traceback when the model was built)


def _cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data + b"\0" * -keep)
    return len(data)


def test_a_truncated_safetensors_file_is_refused_before_the_data_is_read(tmp_path, tiny, capsys, nothing_tokenized):
    checkpoint = _copy(tiny, tmp_path / "cut")
    weights = checkpoint / "model.safetensors"
    size = _cut(weights, (weights.stat().st_size * 2) // 3)
    data = _csv(tmp_path / "data.csv", _rows())
    message = _refused(capsys, tmp_path, checkpoint, data)
    assert message == (
        f"--task: hf:{checkpoint}: its weights file {weights} is truncated ({(size * 2) // 3:,} bytes where its "
        f"header describes {size:,}); save the checkpoint again (save_pretrained) or re-install it"
    )


@pytest.mark.parametrize(
    ("keep", "problem"),
    [
        (5, r"is truncated \(5 bytes: not even a safetensors header\)"),
        (100, r"is truncated or corrupt \(100 bytes; its header alone claims"),
        (-3, r"is corrupt \([\d,]+ bytes where its header describes [\d,]+\)"),
    ],
)
def test_a_cut_or_padded_safetensors_file_is_refused(tmp_path, tiny, keep, problem):
    checkpoint = _copy(tiny, tmp_path / "cut")
    _cut(checkpoint / "model.safetensors", keep)
    with pytest.raises(ValueError, match=rf"^--task: hf:{checkpoint}: its weights file .*model.safetensors {problem}"):
        read_checkpoint(checkpoint)


def test_a_truncated_pytorch_model_bin_is_refused_and_a_whole_one_passes(tmp_path, tiny):
    import transformers

    checkpoint = _copy(tiny, tmp_path / "bin")
    (checkpoint / "model.safetensors").unlink()
    torch.save(transformers.BertModel.from_pretrained(tiny).state_dict(), checkpoint / "pytorch_model.bin")
    read_checkpoint(checkpoint)  # whole: accepted
    _cut(checkpoint / "pytorch_model.bin", 4096)
    with pytest.raises(ValueError, match=r"its weights file .*pytorch_model.bin is truncated or corrupt \(a zip"):
        read_checkpoint(checkpoint)


def test_a_shard_an_index_names_must_be_there_and_whole(tmp_path, tiny):
    checkpoint = _copy(tiny, tmp_path / "sharded")
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "model-00001-of-00001.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    read_checkpoint(checkpoint)
    _cut(checkpoint / "model-00001-of-00001.safetensors", 1000)
    with pytest.raises(ValueError, match=r"its weights file .*model-00001-of-00001.safetensors is truncated"):
        read_checkpoint(checkpoint)
    (checkpoint / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model-00001-of-00001.safetensors is missing \(its index names it\)"):
        read_checkpoint(checkpoint)


# item 12: --max-length past the model's positions (a RuntimeError in the warm-up; 10**7 was OOM-killed)


@pytest.mark.parametrize("length", [1025, 10**7])
def test_a_max_length_past_minilms_512_positions_is_refused(tmp_path, capsys, nothing_tokenized, length):
    data = _csv(tmp_path / "data.csv", _rows())
    message = _refused(capsys, tmp_path, minilm_path(), data, "--max-length", str(length))
    assert message == (
        f"--max-length: {length} is more tokens than hf:{minilm_path()} takes: at most 512 "
        "(config.json's max_position_embeddings 512, its tokenizer's model_max_length 512)"
    )


def test_the_bound_is_the_checkpoints_own_limit(tmp_path, tiny, nothing_tokenized):
    data = _csv(tmp_path / "data.csv", _rows())
    with pytest.raises(ValueError, match=rf"^--max-length: {POSITIONS + 1} is more tokens .* at most {POSITIONS} "):
        hf_task(HFSpec(tiny, data, tmp_path / "cache", max_length=POSITIONS + 1))
    with pytest.raises(ValueError, match=r"^--max-length: 2 leaves no room for text: .* adds 2 special token"):
        hf_task(HFSpec(tiny, data, tmp_path / "cache", max_length=2))
    task, _ = hf_task(HFSpec(tiny, data, tmp_path / "cache", max_length=POSITIONS))
    assert task.name == f"hf:{tiny.name}"


def test_a_tokenizer_without_a_limit_leaves_the_configs(tmp_path, tiny):
    checkpoint = _copy(tiny, tmp_path / "unlimited")
    settings = json.loads((checkpoint / "tokenizer_config.json").read_text())
    settings["model_max_length"] = int(1e30)  # transformers' "no limit"
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(settings))
    limits = read_checkpoint(checkpoint).token_limits
    assert limits == {"config.json's max_position_embeddings": POSITIONS}


def test_a_roberta_style_position_table_takes_fewer_tokens_than_its_rows(tmp_path, tiny):
    checkpoint = _copy(tiny, tmp_path / "roberta-like")
    settings = json.loads((checkpoint / "tokenizer_config.json").read_text())
    settings["model_max_length"] = int(1e30)
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(settings))
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "roberta", "pad_token_id": 1}))
    limits = read_checkpoint(checkpoint).token_limits
    # position ids run from pad_token_id + 1 = 2: a table of POSITIONS rows holds POSITIONS - 2 tokens
    assert list(limits.values()) == [POSITIONS - 2]
    assert "less the 2 position(s) roberta keeps" in next(iter(limits))


# the other failure modes a demanding user hits


def test_a_class_of_one_row_is_said_unscored_or_refused_when_it_would_never_train(tmp_path, tiny):
    data = _csv(tmp_path / "rare.csv", [*_rows(), ("so so", "meh")])
    task, _ = hf_task(HFSpec(tiny, data, tmp_path / "cache", max_length=16))
    assert "3 classes ['meh', 'neg', 'pos']; 8 held out, none of 'meh' (1 row(s)))" in task.description
    with pytest.raises(ValueError, match=r"^--test-fraction: 0.6 holds out every row of class\(es\) 'meh' \(1 row"):
        hf_task(HFSpec(tiny, data, tmp_path / "cache", max_length=16, test_fraction=0.6))


def test_csv_cells_are_read_as_written(tmp_path):
    rows = [("007", "2"), ("NA", "10"), ("1.50", "2"), ("null", "10"), ("12", "N/A"), ("x", "N/A")]
    data = _csv(tmp_path / "cells.csv", rows)
    table = read_labelled_texts(data, "text", "label")
    assert table.texts == ("007", "NA", "1.50", "null", "12", "x")  # not 7.0, NaN, 1.5 ...
    assert table.classes == ("2", "10", "N/A")  # numbers in their order, then the rest
    numbers = read_labelled_texts(_csv(tmp_path / "n.csv", [("a", "10"), ("b", "2"), ("c", "01")]), "text", "label")
    assert numbers.classes == ("01", "2", "10") and numbers.labels.tolist() == [2, 1, 0]


def test_rows_with_more_fields_than_the_header_are_refused(tmp_path):
    data = _csv(tmp_path / "commas.csv", [("hello", " world", "pos"), ("bad", " day", "neg")])
    # every row one field longer: pandas made the first field an index and read " world" as the text
    with pytest.raises(ValueError, match=r"^--data: line 2 of .* holds more fields than its header names"):
        read_labelled_texts(data, "text", "label")
    _csv(data, [("hello world", "pos"), ("bad", " day", "neg")])
    with pytest.raises(ValueError, match=r"^--data: .* cannot be read as csv: .*Expected 2 fields in line 3, saw 3"):
        read_labelled_texts(data, "text", "label")


def test_labels_that_read_alike_are_refused(tmp_path):
    data = _csv(tmp_path / "spaces.csv", [("a", "pos"), ("b", " pos"), ("c", "neg")])
    with pytest.raises(ValueError, match=r"^--label-column: 'label' of .* holds ' pos' and 'pos', two classes"):
        read_labelled_texts(data, "text", "label")
    lines = [{"text": "a", "label": 1}, {"text": "b", "label": "1"}, {"text": "c", "label": 2}]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match=r"^--label-column: 'label' of .* holds 1 and '1', two classes"):
        read_labelled_texts(data, "text", "label")


def test_a_jsonl_line_that_names_a_key_twice_is_refused(tmp_path):
    data = tmp_path / "twice.jsonl"
    data.write_text('{"text": "a", "label": "pos"}\n\n{"text": "b", "label": "pos", "label": "neg"}\n')
    with pytest.raises(ValueError, match=r"^--data: line 3 of .*twice.jsonl names the key 'label' twice"):
        read_labelled_texts(data, "text", "label")
    data.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    assert read_labelled_texts(data, "text", "label").classes == ("neg", "pos")


def test_jsonl_labels_keep_their_spelling(tmp_path):
    lines = [{"text": "a", "label": "01"}, {"text": "b", "label": "1"}, {"text": 7, "label": "01"}]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    table = read_labelled_texts(data, "text", "label")
    assert table.classes == ("01", "1") and table.labels.tolist() == [0, 1, 0] and table.texts == ("a", "b", "7")


def test_a_byte_order_mark_before_the_header_is_read(tmp_path):
    data = tmp_path / "bom.csv"
    data.write_bytes(b"\xef\xbb\xbftext,text,label\na,b,pos\nc,d,neg\n")
    with pytest.raises(ValueError, match=r"names the column\(s\) \['text'\] more than once"):
        read_labelled_texts(data, "text", "label")  # the header check sees past the mark too
    _csv(data, _rows(4))
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    assert read_labelled_texts(data, "text", "label").texts[0] == "a bad day 0"


def test_a_latin_1_file_is_refused_saying_where_and_how_to_convert_it(tmp_path, capsys, nothing_tokenized):
    data = tmp_path / "latin.csv"
    data.write_bytes("text,label\nfine,pos\ncaf\xe9 tr\xe8s bien,pos\nbad,neg\n".encode("latin-1"))
    message = _refused(capsys, tmp_path, minilm_path(), data, "--max-length", "16")
    assert message == (
        f"--data: {data} is not UTF-8 (byte 0xe9 on line 3); save it as UTF-8, e.g. for a latin-1 file: "
        f"iconv -f latin1 -t utf-8 {data} > new.csv"
    )
