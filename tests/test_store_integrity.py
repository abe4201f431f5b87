"""The run store reuses only what it can vouch for: the task's own files, checksummed records, and an
empty store of another configuration never blocks the next start."""

import hashlib
import json
import sqlite3
import textwrap

import pytest

from layerwise import cli
from layerwise.compare.store import RunStore
from layerwise.tasks import load_task_file
from layerwise.tasks.from_file import task_files

TASK_FILE = """
import torch
from torch import nn
from layerwise.tasks import Task, TaskData
import helper

def data(data_dir, quick):
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(0)) * helper.SCALE
    y = (x[:, 0] > 0).long()
    return TaskData((x[:64], y[:64]), (x[64:], y[64:]))

def make_task():
    return Task(name="helped", description=helper.NOTE, make_model=lambda: nn.Sequential(nn.Linear(6, 2)),
                sample_input=lambda: torch.zeros(2, 6), load_data=data, batch_size=16, epochs=1)
"""

HELPER = "SCALE = {scale}\nNOTE = 'scale {scale}'\n"

KEY = RunStore.key("freezeout", {"t0": 0.5}, 2)
RECORD = {"method": "freezeout", "seed": 2, "test_metric": 0.75, "wall_clock_s": 1.5, "steps": 8}


def _task_folder(tmp_path, scale=1.0):
    (tmp_path / "helper.py").write_text(HELPER.format(scale=scale))
    (tmp_path / "job.py").write_text(textwrap.dedent(TASK_FILE))
    return f"{tmp_path / 'job.py'}:make_task"


def _config(task):
    """What a comparison keys its store by, as far as the task goes."""
    return {"task": task.name, "task_settings": task.settings()}


def _stored_run(tmp_path, config=None, record=RECORD):
    path = tmp_path / "runs.sqlite"
    with RunStore(path, config or {"task": "x"}) as store:
        store.save(KEY, record)
    return path


def _execute(path, sql, *args):
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


def _edit_record(path, edit):
    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT record FROM runs WHERE key = ?", (KEY,)).fetchone()
        db.execute("UPDATE runs SET record = ? WHERE key = ?", (edit(text), KEY))
    db.close()


def _forge(path, record_text, seed=2):
    """Write ``record_text`` with the checksum the store would compute for it (as its docstring says)."""
    with sqlite3.connect(path) as db:
        (config_text,) = db.execute("SELECT value FROM config WHERE key = 'config'").fetchone()
        checksum = hashlib.sha256(json.dumps([config_text, KEY, record_text]).encode()).hexdigest()
        db.execute(
            "UPDATE runs SET record = ?, checksum = ?, seed = ? WHERE key = ?", (record_text, checksum, seed, KEY)
        )
    db.close()


def _refusal(path, config=None):
    with pytest.raises(ValueError) as caught:
        RunStore(path, config or {"task": "x"})
    assert "\n" not in str(caught.value) and not isinstance(caught.value, KeyError)
    return str(caught.value)


# the task file's folder


def test_an_edited_helper_module_refuses_the_old_runs_naming_it(tmp_path):
    (tmp_path / "job").mkdir()
    spec = _task_folder(tmp_path / "job", scale=1.0)
    path = _stored_run(tmp_path, _config(load_task_file(spec)))
    (tmp_path / "job" / "helper.py").write_text(HELPER.format(scale=2.0))
    message = _refusal(path, _config(load_task_file(spec)))
    assert "task_settings.source_sha256" in message and "task_settings.lr" not in message
    assert message.endswith(
        "; of the task file and the modules it imports from its folder, changed: helper.py edited. "
        f"Choose another --out or delete {path}"
    )


def test_the_fingerprint_covers_the_modules_imported_from_the_folder_and_nothing_else(tmp_path):
    _task_folder(tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "later.py").write_text("X = 1\n")  # in the package: counted though not imported yet
    (tmp_path / "unused.py").write_text("X = 1\n")
    (tmp_path / "job.py").write_text("import pkg, json\n" + textwrap.dedent(TASK_FILE))
    task = load_task_file(f"{tmp_path / 'job.py'}:make_task")
    files = task_files(task.source_sha256)
    assert sorted(files) == ["helper.py", "job.py", "pkg/__init__.py", "pkg/later.py"]
    assert files["helper.py"] == hashlib.sha256((tmp_path / "helper.py").read_bytes()).hexdigest()
    (tmp_path / "unused.py").write_text("X = 2\n")
    assert load_task_file(f"{tmp_path / 'job.py'}:make_task").source_sha256 == task.source_sha256


def test_a_helper_imported_only_inside_a_function_is_fingerprinted_before_it_runs(tmp_path):
    (tmp_path / "lazy.py").write_text("WIDTH = 8\n")
    (tmp_path / "deeper.py").write_text("import lazy\n")  # a helper's own import counts too
    (tmp_path / "job.py").write_text(
        "from layerwise.tasks import get_task\n"
        "def make_task():\n"
        "    return get_task('ellipse')\n"
        "def make_model():\n"
        "    from deeper import lazy\n"
        "    return lazy.WIDTH\n"
    )
    spec = f"{tmp_path / 'job.py'}:make_task"
    task = load_task_file(spec)
    assert sorted(task_files(task.source_sha256)) == ["deeper.py", "job.py", "lazy.py"]
    (tmp_path / "lazy.py").write_text("WIDTH = 16\n")  # never imported, yet its edit moves the fingerprint
    assert load_task_file(spec).source_sha256 != task.source_sha256


def test_a_task_file_alone_keeps_its_own_sha256(tmp_path):
    path = tmp_path / "alone.py"
    path.write_text("from layerwise.tasks import get_task\ndef make_task():\n    return get_task('ellipse')\n")
    task = load_task_file(f"{path}:make_task")
    assert task.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert task_files(task.source_sha256) == {"alone.py": task.source_sha256}


def test_a_reload_runs_the_edited_helper_from_disk(tmp_path):
    spec = _task_folder(tmp_path, scale=1.0)
    assert load_task_file(spec).description == "scale 1.0"
    (tmp_path / "helper.py").write_text(HELPER.format(scale=3.0))
    assert load_task_file(spec).description == "scale 3.0"


def test_a_store_of_an_older_layerwise_says_what_it_did_not_fingerprint(tmp_path):
    task = load_task_file(_task_folder(tmp_path))
    old_key = _config(task)
    old_key["task_settings"]["source_sha256"] = hashlib.sha256((tmp_path / "job.py").read_bytes()).hexdigest()
    path = tmp_path / "out" / "runs.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:  # the layout an older layerwise wrote: no checksum, no list of files
        db.execute("CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE runs (key TEXT PRIMARY KEY, method TEXT NOT NULL, seed INTEGER NOT NULL, "
            "status TEXT NOT NULL, record TEXT, error TEXT, finished REAL NOT NULL)"
        )
        db.execute("INSERT INTO config VALUES ('config', ?)", (json.dumps(old_key, sort_keys=True),))
        db.execute("INSERT INTO runs VALUES (?, 'freezeout', 2, 'ok', ?, NULL, 0)", (KEY, json.dumps(RECORD)))
    db.close()
    message = _refusal(path, _config(task))
    assert "written by an older layerwise, which fingerprinted the task file alone" in message
    assert (
        "the fingerprint now covers the task file and the modules it imports from its folder: helper.py, job.py"
        in message
    )
    assert _refusal(path, old_key) == (
        f"--out: {path} was written by an older layerwise: its runs carry no checksum, so an edited record "
        f"could not be told; choose another --out or delete {path}"
    )
    _execute(path, "DELETE FROM runs")
    with RunStore(path, old_key) as store:  # nothing in it to vouch for: taken over
        store.save(KEY, RECORD)
    assert RunStore(path, old_key).finished(KEY) == RECORD


# checksummed records


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace("0.75", "0.99"),
        lambda text: text.replace("0.75", "NaN"),
        lambda text: "{}",
        lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "steps"}),
        lambda text: json.dumps({**json.loads(text), "note": "extra"}),
        lambda text: text.replace('"test_metric": 0.75', '"test_metric": 0.75 '),
    ],
    ids=["metric", "nan-metric", "empty", "deleted-field", "extra-field", "whitespace"],
)
def test_an_edited_record_is_refused_naming_the_run(tmp_path, edit):
    path = _stored_run(tmp_path)
    _edit_record(path, edit)
    assert _refusal(path) == (
        f"--out: {path}: the stored run freezeout seed 2 does not match its checksum (changed after it was "
        f"stored); choose another --out or delete {path}"
    )


def test_a_record_copied_from_another_task_or_run_is_refused(tmp_path):
    other = _stored_run(tmp_path / "other", {"task": "y"}, dict(RECORD, test_metric=0.99))
    path = _stored_run(tmp_path)
    _execute(path, "DELETE FROM runs")
    with sqlite3.connect(path) as db:
        db.execute(f"ATTACH DATABASE '{other}' AS other")
        db.execute("INSERT INTO runs SELECT * FROM other.runs")
    db.close()
    assert "the stored run freezeout seed 2 does not match its checksum" in _refusal(path)
    path = _stored_run(tmp_path / "twin")
    seed3 = RunStore.key("freezeout", {"t0": 0.5}, 3)
    _execute(path, "INSERT INTO runs SELECT ?, method, 3, status, record, error, finished, checksum FROM runs", seed3)
    assert "the stored run freezeout seed 3 does not match its checksum" in _refusal(path)


def test_an_edited_configuration_disowns_every_record(tmp_path):
    path = _stored_run(tmp_path, {"task": "x", "lr": 0.1})
    _execute(path, "UPDATE config SET value = ? WHERE key = 'config'", json.dumps({"lr": 0.2, "task": "x"}))
    assert "freezeout seed 2 does not match its checksum" in _refusal(path, {"task": "x", "lr": 0.2})


@pytest.mark.parametrize(
    ("record_text", "seed", "problem"),
    [
        ("{}", 2, "lacks its method"),
        ("[]", 2, "is not a JSON object"),
        ('{"method": "freezeout"}', 2, "lacks its seed"),
        ('{"method": "freezeout", "seed": "2"}', 2, "has seed '2', expected an int"),
        ('{"method": "freezeout", "seed": 2}', 3, "records freezeout seed 2, not its row's"),
        ('{"method": "freezeout", "seed": 2, "test_metric": NaN}', 2, "has test_metric nan, expected a finite"),
        ('{"method": "freezeout", "seed": 2, "wall_clock_s": -1}', 2, "has wall_clock_s -1, expected a finite"),
    ],
    ids=["empty", "list", "no-seed", "text-seed", "other-seed", "nan-metric", "negative-time"],
)
def test_a_record_that_matches_its_checksum_still_needs_its_fields(tmp_path, record_text, seed, problem):
    path = _stored_run(tmp_path)
    _forge(path, record_text, seed)
    assert _refusal(path).startswith(f"--out: {path}: the stored run freezeout seed {seed} {problem}")


def test_a_record_edited_while_the_store_is_open_is_refused_when_read(tmp_path):
    path = _stored_run(tmp_path)
    store = RunStore(path, {"task": "x"})
    _edit_record(path, lambda text: "{}")
    with pytest.raises(ValueError, match="the stored run freezeout seed 2 does not match its checksum"):
        store.finished(KEY)
    store.close()


def test_a_row_stored_twice_is_refused(tmp_path):
    path = _stored_run(tmp_path)
    with sqlite3.connect(path) as db:  # a table rebuilt without its primary key
        db.execute("CREATE TABLE copy AS SELECT * FROM runs")
        db.execute("DROP TABLE runs")
        db.execute("ALTER TABLE copy RENAME TO runs")
        db.execute("INSERT INTO runs SELECT * FROM runs")
    db.close()
    assert "the run freezeout seed 2 is stored twice" in _refusal(path)


def test_a_record_the_store_would_refuse_is_never_written(tmp_path):
    with RunStore(tmp_path / "runs.sqlite", {"task": "x"}) as store:
        with pytest.raises(ValueError, match=r"record: the record of freezeout\|.*\|2 lacks its method"):
            store.save(KEY, {})
        with pytest.raises(ValueError, match="has test_metric nan"):
            store.save(KEY, dict(RECORD, test_metric=float("nan")))
        with pytest.raises(TypeError, match="must be a dict, got list"):
            store.save(KEY, [])
        assert not store.any_finished()
    with RunStore(tmp_path / "runs.sqlite", {"task": "x"}) as store:
        store.save(KEY, dict(RECORD, test_metric=None))  # a diverged run has no metric
    assert RunStore(tmp_path / "runs.sqlite", {"task": "x"}).finished(KEY)["test_metric"] is None


# a store left empty by a failed start


def test_an_empty_store_of_another_configuration_is_taken_over(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path, {"task": "x", "max_length": 10_000_000})  # then killed: no run, no cleanup
    store.fail(KEY, "freezeout", 2, "killed")
    store.close()
    with pytest.warns(
        UserWarning, match=r"held no finished run, only another configuration \(max_length: 10000000 -> 128\)"
    ):
        store = RunStore(path, {"task": "x", "max_length": 128})
    assert store.error(KEY) is None  # the other configuration's failures are gone
    store.save(KEY, RECORD)
    store.close()
    assert RunStore(path, {"task": "x", "max_length": 128}).finished(KEY) == RECORD
    assert "holds runs of a different configuration" in _refusal(path, {"task": "x", "max_length": 64})


# through `layerwise compare`


def _compare(capsys, spec, out):
    argv = ["compare", "--task", spec, "--methods", "baseline", "--budget", "steps", "--out", str(out)]
    code = cli.main([*argv, "--no-progress", "--eval-points", "1"])
    return code, capsys.readouterr()


def test_compare_refuses_an_edited_helper_and_an_edited_metric(tmp_path, capsys):
    spec, out = _task_folder(tmp_path, scale=1.0), tmp_path / "out"
    code, captured = _compare(capsys, spec, out)
    assert code == 0, captured.err
    (tmp_path / "helper.py").write_text(HELPER.format(scale=50.0))
    code, captured = _compare(capsys, spec, out)
    assert code == 2 and captured.err.count("\n") == 1 and "| baseline |" not in captured.out
    assert "changed: helper.py edited. Choose another --out or delete" in captured.err
    (tmp_path / "helper.py").write_text(HELPER.format(scale=1.0))
    with sqlite3.connect(out / "runs.sqlite") as db:
        (text,) = db.execute("SELECT record FROM runs").fetchone()
        db.execute("UPDATE runs SET record = ?", (json.dumps({**json.loads(text), "test_metric": 1.0}),))
    db.close()
    code, captured = _compare(capsys, spec, out)
    assert code == 2 and captured.err.count("\n") == 1
    assert "the stored run baseline seed 0 does not match its checksum" in captured.err
