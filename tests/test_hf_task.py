"""`layerwise compare --task hf:DIR --data FILE`: the packaged MiniLM fine-tuned on a file the test writes."""

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from layerwise import cli
from layerwise.tasks import hf_checkpoint, text_files
from layerwise.tasks.hf_checkpoint import HFSpec, hf_task
from layerwise.tasks.pretrained import minilm_path, minilm_tokenizer

WORDS = ("good", "fine", "great", "bad", "poor", "awful")
README = Path(__file__).resolve().parent.parent / "docs" / "guide" / "compare.md"  # the guide page with the command


def _readme_command(checkpoint, data, out):
    """The guide's ``layerwise compare --task hf:...`` command, on ``checkpoint`` and ``data`` into ``out``."""
    line = re.search(r"^\.venv/bin/layerwise (compare --task hf:.*)$", README.read_text(), re.M).group(1)
    args = shlex.split(line)
    replaced = {"hf:path/to/checkpoint": f"hf:{checkpoint}", "reviews.csv": str(data), "runs/reviews": str(out)}
    assert set(replaced) <= set(args), line  # the test runs what the guide says
    return [replaced.get(arg, arg) for arg in args]


def _rows(n=64):
    """``n`` short texts, every other one 'pos' (a good word) or 'neg' (a bad word)."""
    return [{"text": f"a {WORDS[(i % 2) * 3 + i % 3]} day {i}", "label": ("pos", "neg")[i % 2]} for i in range(n)]


def _csv(path, rows):
    lines = ["text,label", *(f"{r['text']},{r['label']}" for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-data")
    rows = _rows()
    return {"csv": _csv(folder / "reviews.csv", rows), "jsonl": _jsonl(folder / "reviews.jsonl", rows), "rows": rows}


def _compare(capsys, *flags):
    code = cli.main(flags if flags[0] == "compare" else ["compare", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _counting(monkeypatch, module, name):
    """The calls of ``module.name`` from now on (their first arguments)."""
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_checkpoint_fine_tunes_on_a_csv_and_the_tokens_are_cached_once(tmp_path, files, capsys, monkeypatch):
    calls = _counting(monkeypatch, text_files, "tokenize")
    loads = _counting(monkeypatch, hf_checkpoint, "cached_token_ids")
    out = tmp_path / "out"
    readme = _readme_command(minilm_path(), files["csv"], out)
    small = ["--max-length", "16", "--quick", "--train-size", "32", "--budget", "steps", "--eval-points", "1"]

    code, _, stderr = _compare(capsys, *readme, *small, "--no-progress")
    assert code == 0, stderr
    assert {p.name for p in (out / "runs").glob("*.json")} == {"baseline-seed0.json", "freezeout-seed0.json"}
    assert "BertModel holds no classification head: a new 2-way head is trained" in stderr
    assert stderr.count("head is trained") == 1  # said once, not once per run
    cached = list((out / "tokenized").iterdir())
    assert len(cached) == 1 and len(calls) == 1
    texts = [r["text"] for r in files["rows"]]
    expected = minilm_tokenizer()(texts, padding="max_length", truncation=True, max_length=16)["input_ids"]
    assert torch.equal(torch.load(cached[0], weights_only=True), torch.tensor(expected))
    written = cached[0].stat().st_mtime_ns

    # one more method into the same --out: the baseline's run is reused, the new one trains on the cached tokens
    code, _, stderr = _compare(capsys, *readme, *small, "--methods", "baseline,freezeout-soft", "--no-progress")
    assert code == 0, stderr
    assert len(list((out / "runs").glob("*.json"))) == 3
    assert len(loads) == 2 and len(calls) == 1 and list((out / "tokenized").iterdir()) == cached
    assert cached[0].stat().st_mtime_ns == written


def _rows_of(x, ids):
    """The row of ``ids`` (the file's texts tokenized) each row of ``x`` is."""
    return [int(torch.nonzero((ids == row).all(dim=1))[0]) for row in x]


def test_the_held_out_split_is_stratified_and_jsonl_reads_as_csv(tmp_path, files):
    specs = [HFSpec(minilm_path(), files[kind], tmp_path / kind, max_length=16) for kind in ("csv", "jsonl")]
    tasks = [hf_task(spec)[0] for spec in specs]
    data = [task.load_data(None, False) for task in tasks]
    for a, b in zip(data[0].train + data[0].test, data[1].train + data[1].test):
        assert torch.equal(a, b)
    labels = torch.tensor([{"neg": 0, "pos": 1}[r["label"]] for r in files["rows"]])  # sorted classes: neg, pos
    (x_train, y_train), (x_test, y_test) = data[0].train, data[0].test
    assert torch.bincount(y_test).tolist() == [round(0.2 * 32)] * 2 and len(y_train) == 64 - 12
    ids = text_files.tokenize([r["text"] for r in files["rows"]], 16, minilm_tokenizer())
    for x, y in ((x_train, y_train), (x_test, y_test)):  # every example keeps its own label
        assert torch.equal(labels[_rows_of(x, ids)], y)
    assert not {tuple(r.tolist()) for r in x_train} & {tuple(r.tolist()) for r in x_test}


def test_list_shows_the_partition_embeddings_each_layer_head(tmp_path, files, capsys):
    code, stdout, stderr = _compare(
        capsys, "--list", "--task", f"hf:{minilm_path()}", "--data", str(files["csv"]), "--out", str(tmp_path / "o")
    )
    assert code == 0, stderr
    listed = stdout[stdout.index("partition of hf:model (8 groups") :].splitlines()[1:]
    config = json.loads((minilm_path() / "config.json").read_text())
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    positions, types = config["max_position_embeddings"], config["type_vocab_size"]
    embeddings = (config["vocab_size"] + positions + types) * hidden + 2 * hidden  # three tables, a LayerNorm
    layer = 4 * (hidden * hidden + hidden) + 2 * (hidden * inner) + inner + hidden + 4 * hidden  # + 2 LayerNorms
    head = hidden * hidden + hidden + 2 * hidden + 2  # pooler, 2-way classifier
    expected = [("embeddings", embeddings), *((f"layer{i}", layer) for i in range(6)), ("head", head)]
    assert [(line.split()[0], int(line.split()[3].replace(",", ""))) for line in listed] == expected
    assert not (tmp_path / "o").exists()


def test_a_head_of_another_width_is_replaced_and_one_of_the_same_width_kept(tmp_path, files):
    import transformers

    saved = transformers.AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=2)
    saved.save_pretrained(tmp_path / "ckpt")
    minilm_tokenizer().save_pretrained(tmp_path / "ckpt")
    kept, note = hf_task(HFSpec(tmp_path / "ckpt", files["csv"], tmp_path / "c2"))
    assert note is None
    assert torch.equal(kept.make_model().model.classifier.weight, saved.classifier.weight)
    assert "2 classes ['neg', 'pos']" in kept.description  # LABEL_0, LABEL_1 name other classes: sorted

    saved.config.id2label, saved.config.label2id = {0: "pos", 1: "neg"}, {"pos": 0, "neg": 1}
    saved.save_pretrained(tmp_path / "ckpt")  # a head trained on these labels: its order is kept
    ordered, _ = hf_task(HFSpec(tmp_path / "ckpt", files["csv"], tmp_path / "c2"))
    expected = torch.tensor([{"pos": 0, "neg": 1}[r["label"]] for r in files["rows"]])
    ids = text_files.tokenize([r["text"] for r in files["rows"]], 128, minilm_tokenizer())
    data = ordered.load_data(None, False)
    for x, y in (data.train, data.test):
        assert torch.equal(expected[_rows_of(x, ids)], y)
    assert "2 classes ['pos', 'neg']" in ordered.description

    three = [*files["rows"], {"text": "so so", "label": "meh"}] * 2
    task, note = hf_task(HFSpec(tmp_path / "ckpt", _csv(tmp_path / "three.csv", three), tmp_path / "c3"))
    assert note == "the checkpoint's head has 2 outputs and the labels 3 classes: a new 3-way head replaces it"
    model = task.make_model().model
    assert model.classifier.out_features == 3
    assert torch.equal(model.bert.encoder.layer[5].output.dense.weight, saved.bert.encoder.layer[5].output.dense.weight)


def _bad(tmp_path, files):
    one_class = _csv(tmp_path / "one.csv", [{"text": "x", "label": "pos"}] * 8)
    no_config = tmp_path / "empty"
    no_config.mkdir()
    vision = tmp_path / "vit"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    unweighted = tmp_path / "no-weights"
    unweighted.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (unweighted / name).write_bytes((minilm_path() / name).read_bytes())
    other = tmp_path / "reviews.txt"
    other.write_text("text,label\n")
    hf, csv = f"hf:{minilm_path()}", str(files["csv"])
    return {
        "text column": (["--task", hf, "--data", csv, "--text-column", "body"],
                        f"--text-column: 'body' is not a column of {csv}; its columns: ['text', 'label']"),
        "label column": (["--task", hf, "--data", csv, "--label-column", "y"],
                         f"--label-column: 'y' is not a column of {csv}; its columns: ['text', 'label']"),
        "one class": (["--task", hf, "--data", str(one_class)],
                      f"--label-column: 'label' of {one_class} holds one class ('pos'); a classifier needs two"),
        "no config": (["--task", f"hf:{no_config}", "--data", csv],
                      f"--task: hf:{no_config}: no config.json in it; expected a sequence-classification checkpoint"),
        "not a classifier": (["--task", f"hf:{vision}", "--data", csv],
                             f"--task: hf:{vision}: a ViTModel checkpoint (model type 'vit') is not a sequence "
                             "classifier and cannot be loaded as one"),
        "no weights": (["--task", f"hf:{unweighted}", "--data", csv],
                       f"--task: hf:{unweighted}: no weights in it (expected one of ['model.safetensors'"),
        "data without hf": (["--task", "ellipse", "--data", csv],
                            "--data: reads a data file for --task hf:DIR only, got --task ellipse"),
        "hf without data": (["--task", hf], f"--task: {hf} needs --data FILE (.csv, .jsonl or .parquet)"),
        "extension": (["--task", hf, "--data", str(other)],
                      f"--data: unknown extension '.txt' of {other}; use one of ['.csv', '.jsonl', '.parquet']"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["text column", "label column", "one class", "no config", "not a classifier", "no weights", "data without hf",
     "hf without data", "extension"],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_flag_and_nothing_is_written(tmp_path, files, capsys, case):
    flags, message = _bad(tmp_path, files)[case]
    out = tmp_path / "out"
    code, _, stderr = _compare(capsys, *flags, "--budget", "steps", "--out", str(out))
    assert code == 2
    assert stderr.startswith(f"layerwise compare: error: {message}") and stderr.count("\n") == 1, stderr
    assert not out.exists()


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, files, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    without = lambda name, *rest: None if name == "pyarrow" else find_spec(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", without)
    data = tmp_path / "reviews.parquet"
    data.write_bytes(b"PAR1")
    out = tmp_path / "out"
    code, _, stderr = _compare(capsys, "--task", f"hf:{minilm_path()}", "--data", str(data), "--out", str(out))
    assert code == 2 and not out.exists()
    assert stderr == f"layerwise compare: error: --data: reading {data} (parquet) needs pyarrow: pip install pyarrow\n"


def test_hf_alone_is_refused_outside_the_command_line():
    from layerwise.tasks import resolve_task

    with pytest.raises(ValueError, match=r"task: hf:some/dir needs a data file; build it with layerwise.tasks.hf_task"):
        resolve_task("hf:some/dir")
