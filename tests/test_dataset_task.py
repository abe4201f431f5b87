"""A task whose data is a ``Dataset`` (dict examples of variable length, padded by a collate function),
train-time augmentation, DataLoader workers, the loss hooks and a Hugging Face-style model, through
``layerwise compare``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers.modeling_outputs import SequenceClassifierOutput

from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.runner import run_one
from layerwise.tasks import Task, TaskData, register_task
from layerwise.tasks.loop import evaluate, example_seed, seeded_batches_of
from layerwise.training import seeded_indices

VOCAB, WIDTH = 20, 8
METHODS = ["baseline", "freezeout", "freezeout+cache", "multirate", "hidlr"]


class Sentences(Dataset):
    """``count`` token sequences of 2 to 7 tokens; the label says whether their mean token is high."""

    def __init__(self, count: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(2, 8, (count,), generator=g)
        self.tokens = [torch.randint(0, VOCAB, (int(n),), generator=g) for n in lengths]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tokens = self.tokens[i]
        return {"tokens": tokens, "label": torch.tensor(int(tokens.float().mean() > (VOCAB - 1) / 2))}


def pad(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch, with a mask of the real tokens."""
    longest = max(len(e["tokens"]) for e in examples)
    tokens = torch.zeros(len(examples), longest, dtype=torch.long)
    mask = torch.zeros(len(examples), longest)
    for row, example in enumerate(examples):
        tokens[row, : len(example["tokens"])] = example["tokens"]
        mask[row, : len(example["tokens"])] = 1.0
    return {"tokens": tokens, "mask": mask, "label": torch.stack([e["label"] for e in examples])}


class Pool(nn.Module):
    """Embeddings averaged over the real tokens: one fixed-width row per example."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.embed(tokens) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool, self.fc1, self.fc2 = Pool(), nn.Linear(WIDTH, 16), nn.Linear(16, 2)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.pool(tokens, mask))))


def sentences(data_dir, quick) -> TaskData:
    del data_dir, quick
    return TaskData(Sentences(96, seed=0), Sentences(40, seed=1))


def sentence_task(name: str = "sentences", **overrides) -> Task:
    fields = {
        "description": "variable-length sentences of token ids, padded by a collate function",
        "make_model": Bag,
        "sample_input": lambda: {"tokens": torch.zeros(2, 3, dtype=torch.long), "mask": torch.ones(2, 3)},
        "load_data": sentences,
        "collate_fn": pad,
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.1,
        "weight_decay": 0.0,
    }
    return Task(name=name, **{**fields, **overrides})


def _records(result) -> dict:
    assert not [label for label, outcome in result["outcomes"].items() if outcome["errors"]], result["outcomes"]
    return {label: outcome["records"][0] for label, outcome in result["outcomes"].items()}


def _compare(task, methods, out, **options):
    options = {"seeds": 1, "progress": False, "eval_points": 2, "budget": "steps", **options}
    return compare(task, methods, out=out, **options)


def _first_loss(task: Task, data) -> float:
    """The loss of the seeded model on the first seeded batch, computed by hand."""
    torch.manual_seed(0)
    model = task.make_model()
    _, _, index = next(seeded_indices(len(data), task.batch_size, seed=0, steps=1))
    batch = pad([data[int(i)] for i in index])
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(batch["tokens"], batch["mask"]), batch["label"]))


# ---- every technique on a Dataset of dicts ----------------------------------------------------------


def test_a_dataset_task_runs_every_technique_by_steps(tmp_path):
    task = sentence_task()
    records = _records(_compare(task, METHODS, tmp_path))
    assert set(records) == set(METHODS)
    first = _first_loss(task, Sentences(96, seed=0))
    for label, record in records.items():
        assert record["steps"] == 18 and record["train_size"] == 96 and record["test_examples"] == 40, label
        assert record["train_loss"][0] == pytest.approx(first, rel=1e-5), label
        assert 0.0 <= record["test_metric"] <= 1.0
    cached, plain = records["freezeout+cache"], records["freezeout"]
    assert cached["cache"]["hits"] > 0 and cached["frozen_at"] == plain["frozen_at"]
    assert cached["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)
    assert records["hidlr"]["found_lr_stats"]


def test_a_dataset_task_runs_every_technique_by_time(tmp_path):
    records = _records(_compare(sentence_task("sentences-time"), METHODS, tmp_path, budget="time"))
    budget = records["baseline"]["wall_clock_s"]
    for label in METHODS[1:]:
        assert records[label]["budget_s"] == budget and records[label]["steps"] >= 1, label


def test_telemetry_reads_a_dataset_run():
    record = run_one(sentence_task(), "multirate", seed=0, steps=6, eval_points=1, telemetry_every=2)
    assert record["telemetry"] and record["steps"] == 6


# ---- augmentation ------------------------------------------------------------------------------------


def jitter(example: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Replace one random token by a random token."""
    tokens = example["tokens"].clone()
    tokens[int(torch.randint(0, len(tokens), (1,), generator=generator))] = int(
        torch.randint(0, VOCAB, (1,), generator=generator)
    )
    return {**example, "tokens": tokens}


class Seen(Bag):
    """The bag model, keeping every training batch's tokens."""

    batches: ClassVar[list[torch.Tensor]] = []

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            Seen.batches.append(tokens.clone())
        return super().forward(tokens, mask)


def _seen(task: Task, method: str, seed: int) -> list[torch.Tensor]:
    Seen.batches = []
    run_one(task, method, seed=seed, steps=8, eval_points=1)
    return Seen.batches


def test_augmentation_is_the_same_for_every_method_of_a_seed_and_differs_by_seed():
    task = sentence_task("augmented", make_model=Seen, train_transform=jitter)
    baseline, freezeout, other = _seen(task, "baseline", 0), _seen(task, "freezeout", 0), _seen(task, "baseline", 1)
    assert len(baseline) == len(freezeout) == 8
    assert all(torch.equal(a, b) for a, b in zip(baseline, freezeout))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(baseline, other))
    data = Sentences(96, seed=0)
    for step, epoch, index in seeded_indices(96, 16, seed=0, steps=8):  # the draws by hand: (seed, epoch, index)
        drawn = [jitter(data[int(i)], torch.Generator().manual_seed(example_seed(0, epoch, int(i)))) for i in index]
        assert torch.equal(baseline[step], pad(drawn)["tokens"])
    order = seeded_indices(96, 16, seed=0, steps=8)
    unaugmented = [pad([data[int(i)] for i in index])["tokens"] for _, _, index in order]
    assert not all(torch.equal(a, b) for a, b in zip(baseline, unaugmented))


def test_the_prefix_cache_refuses_an_augmented_task_before_training(tmp_path):
    task = sentence_task("augmented-cache", make_model=Seen, train_transform=jitter)
    Seen.batches = []
    with pytest.raises(ValueError, match="freezeout\\+cache: task 'augmented-cache' has a train_transform"):
        run_one(task, "freezeout+cache", seed=0, steps=4, eval_points=1)
    assert Seen.batches == []
    result = _compare(task, ["baseline", "freezeout+cache"], tmp_path)
    assert "train_transform" in result["outcomes"]["freezeout+cache"]["errors"][0]


# ---- DataLoader workers -------------------------------------------------------------------------------


def test_workers_collate_the_same_batches():
    data = Sentences(40, seed=2)
    options = {"seed": 3, "steps": 9, "collate_fn": pad, "transform": jitter}
    alone = list(seeded_batches_of(data, 8, num_workers=0, **options))
    workers = list(seeded_batches_of(data, 8, num_workers=2, **options))
    assert len(alone) == len(workers) == 9
    for (s, e, i, a), (s2, e2, i2, b) in zip(alone, workers):
        assert (s, e) == (s2, e2) and torch.equal(i, i2)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    one = run_one(sentence_task(), "baseline", seed=0, steps=6, eval_points=1)
    two = run_one(sentence_task(num_workers=2), "baseline", seed=0, steps=6, eval_points=1)
    assert one["train_loss"] == two["train_loss"] and one["test_loss"] == two["test_loss"]


# ---- a Hugging Face-style model, no hooks --------------------------------------------------------------


class Classifier(nn.Module):
    """Takes ``input_ids``, ``attention_mask`` and ``labels``; returns a ``SequenceClassifierOutput``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, 2)

    def forward(self, input_ids, attention_mask, labels=None) -> SequenceClassifierOutput:
        mask = attention_mask.unsqueeze(-1)
        logits = self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels) * 2.0  # its own loss
        return SequenceClassifierOutput(loss=loss, logits=logits)


def hf_pad(examples):
    batch = pad(examples)
    return {"input_ids": batch["tokens"], "attention_mask": batch["mask"], "labels": batch["label"]}


def hf_task(name: str = "hf-style", **overrides) -> Task:
    sample = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3)}
    return sentence_task(name, make_model=Classifier, sample_input=lambda: sample, collate_fn=hf_pad, **overrides)


def test_a_hugging_face_style_model_needs_no_hook(tmp_path):
    task, test = hf_task(), Sentences(40, seed=1)
    torch.manual_seed(0)
    model = task.make_model()
    everything = hf_pad([test[i] for i in range(len(test))])
    with torch.no_grad():
        outputs = model(**everything)
    hits = outputs.logits.argmax(1) == everything["labels"]
    expected = {"loss": float(outputs.loss), "accuracy": float(hits.float().mean())}
    assert evaluate(model, test, task, batch_size=16) == pytest.approx(expected, rel=1e-5)  # its own .loss, x2
    records = _records(_compare(task, ["baseline", "hidlr"], tmp_path))
    assert all(r["steps"] == 18 and r["test_loss"] is not None for r in records.values())


class DictInput(nn.Module):
    """Takes a dict of padded tokens and mask as one argument (a tokenized dict held as tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = Bag()

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.bag(inputs["tokens"], inputs["mask"])


def test_a_tokenized_dict_of_tensors_is_sliced_like_tensors():
    data = pad([Sentences(96, seed=0)[i] for i in range(96)])
    inputs, labels = {"tokens": data["tokens"], "mask": data["mask"]}, data["label"]
    task = sentence_task(
        "dict-tensors",
        make_model=DictInput,
        collate_fn=None,
        sample_input=lambda: ({"tokens": torch.zeros(2, 3, dtype=torch.long), "mask": torch.ones(2, 3)},),
        load_data=lambda d, q: TaskData((inputs, labels), ({k: v[:40] for k, v in inputs.items()}, labels[:40])),
    )
    record = run_one(task, "hidlr", seed=0, steps=6, eval_points=1)
    torch.manual_seed(0)
    model = task.make_model()
    _, _, index = next(seeded_indices(96, 16, seed=0, steps=1))
    with torch.no_grad():
        first = float(nn.functional.cross_entropy(model({k: v[index] for k, v in inputs.items()}), labels[index]))
    assert record["steps"] == 6 and record["train_loss"][0] == pytest.approx(first, rel=1e-5)
    assert record["test_examples"] == 40


# ---- bad input ------------------------------------------------------------------------------------------


def _per_example(model, batch):
    return nn.functional.cross_entropy(model(batch["tokens"], batch["mask"]), batch["label"], reduction="none")


def _a_float(model, batch):
    return float(_per_example(model, batch).mean().detach())


@pytest.mark.parametrize(("batch_loss", "got"), [(_per_example, r"a tensor of shape \(16,\)"), (_a_float, "float")])
def test_a_batch_loss_that_is_not_a_scalar_tensor_is_refused_before_training(tmp_path, batch_loss, got):
    task = sentence_task("bad-loss", batch_loss=batch_loss)
    with pytest.raises(ValueError, match=f"batch_loss: task 'bad-loss'.* must return a scalar tensor .*got {got}"):
        _compare(task, ["baseline"], tmp_path)
    assert not list(tmp_path.rglob("*seed0.json"))  # no run was written


def test_a_collate_that_cannot_batch_is_refused_naming_collate_fn(tmp_path):
    task = sentence_task("no-collate", collate_fn=None)  # default_collate cannot stack sequences of many lengths
    with pytest.raises(ValueError, match="collate_fn \\(default_collate\\): cannot batch the examples"):
        _compare(task, ["baseline"], tmp_path)


def test_bad_task_data_and_fields_are_refused():
    with pytest.raises(TypeError, match=r"train: expected .* a map-style torch\.utils\.data\.Dataset"):
        TaskData([1, 2, 3], Sentences(4, seed=0))
    with pytest.raises(ValueError, match="num_workers: expected an int >= 0, got -1"):
        sentence_task(num_workers=-1)


# ---- data-parallel: a dict batch split along its batch dimension ---------------------------------------


def test_nproc_2_splits_dict_batches_and_equals_one_process(tmp_path):
    task = register_task(sentence_task("sentences-nproc", epochs=1))
    single = _records(_compare(task.name, ["baseline", "hidlr"], tmp_path / "one"))
    parallel = _records(_compare(task.name, ["baseline", "hidlr"], tmp_path / "two", nproc=2))
    for label, record in parallel.items():
        assert record["nproc"] == 2 and record["steps"] == single[label]["steps"] == 6
        assert record["train_loss"] == pytest.approx(single[label]["train_loss"], rel=1e-5), label
        assert record["test_loss"] == pytest.approx(single[label]["test_loss"], rel=1e-5), label


# ---- the guide's own training job (docs/guide/compare.md) ------------------------------------------------


def test_the_guide_mnist_task_file_runs_with_the_guide_command(tmp_path, capsys, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "docs" / "guide" / "compare.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith("# mnist_task.py"))
    (tmp_path / "mnist_task.py").write_text(block)
    command = next(line for line in readme.splitlines() if "--task mnist_task.py:make_task" in line).split()
    assert command[:2] == [".venv/bin/layerwise", "compare"]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "mnist"
    flags = [f for f in command[2:] if f not in ("--out", "runs/mnist")] + ["--out", str(out)]
    assert cli.main(["compare", *flags, "--quick", "--no-progress"]) == 0, capsys.readouterr().err
    records = {p.stem for p in (out / "runs").glob("*.json")}
    assert records == {"baseline-seed0", "freezeout-seed0", "multirate-seed0", "hidlr-seed0"}
