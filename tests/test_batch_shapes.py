"""The shapes a task's own job hands the metric: ``batch_outputs``, the default forward, ``collate_fn`` and
the tensor-pair inputs are checked on the first batch, before the first optimizer step; the accuracy
never broadcasts."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification

from blobs import blobs, blobs_task, mlp
from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.runner import run_one
from layerwise.tasks import Task, TaskData
from layerwise.tasks.base import example_accuracy
from layerwise.tasks.loop import evaluate

CE = nn.functional.cross_entropy


class CountingSGD(torch.optim.SGD):
    """SGD that counts its steps, to tell a refusal before training from a failure after it."""

    steps: ClassVar[int] = 0

    def step(self, closure=None):
        CountingSGD.steps += 1
        return super().step(closure)


def _loss(model, batch):
    x, y = batch
    return CE(model(x), y)


def _hook_task(name, batch_outputs):
    """The blobs task with a right ``batch_loss`` and the given ``batch_outputs``: only evaluation reads it."""
    return blobs_task(name, batch_loss=_loss, batch_outputs=batch_outputs, optimizer=CountingSGD)


def _targets_b1(model, batch):
    return model(batch[0]), batch[1][:, None]


def _outputs_bc1(model, batch):
    return model(batch[0])[:, :, None], batch[1]


def _half_the_rows(model, batch):
    half = len(batch[1]) // 2
    return model(batch[0][:half]), batch[1][:half]


def _transposed(model, batch):
    return model(batch[0]).T, batch[1]


ACCEPTED = r"; accuracy takes one row per example: logits \[B, C\] with class-index targets \[B\]"
REFUSED = [
    (_targets_b1, r"outputs of shape \(32, 3\) and targets of shape \(32, 1\) for a batch of 32 examples" + ACCEPTED),
    (_outputs_bc1, r"outputs of shape \(32, 3, 1\) and targets of shape \(32,\) for a batch of 32 examples" + ACCEPTED),
    (_half_the_rows, r"outputs of shape \(16, 3\) and targets of shape \(16,\) for a batch of 32 examples" + ACCEPTED),
    (_transposed, r"outputs of shape \(3, 32\) and targets of shape \(32,\) for a batch of 32 examples \(transposed"),
]


@pytest.mark.parametrize(("batch_outputs", "match"), REFUSED, ids=["targets-B1", "outputs-BC1", "half", "transposed"])
def test_outputs_the_accuracy_would_misread_are_refused_before_the_first_step(batch_outputs, match, tmp_path):
    task = _hook_task("misread", batch_outputs)
    CountingSGD.steps = 0
    with pytest.raises(ValueError, match=f"^batch_outputs: task 'misread' gave {match}"):
        run_one(task, "baseline", seed=0, steps=4, eval_points=1)
    assert CountingSGD.steps == 0
    with pytest.raises(ValueError, match=f"^batch_outputs: task 'misread' gave {match}"):
        compare(task, ["baseline"], out=tmp_path, budget="steps", progress=False, eval_points=1)
    assert CountingSGD.steps == 0 and not list(tmp_path.rglob("*seed0.json"))  # the baseline never trained


def test_the_default_forward_is_checked_too():
    task = blobs_task("wide", make_model=lambda: nn.Sequential(mlp(), nn.Unflatten(1, (3, 1))), loss=_squeezed_ce)
    with pytest.raises(ValueError, match=r"^the default forward: task 'wide' gave outputs of shape \(32, 3, 1\)"):
        run_one(task, "baseline", seed=0, steps=2, eval_points=1)


def _squeezed_ce(outputs, targets):
    return CE(outputs.squeeze(2), targets)


def test_the_accuracy_refuses_shapes_it_would_broadcast():
    task = blobs_task("direct")
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert torch.equal(example_accuracy(task, logits, labels, 8), (logits.argmax(1) == labels).float())
    for outputs, targets in [(logits, labels[:, None]), (logits[:, :, None], labels), (logits[:4], labels[:4])]:
        with pytest.raises(ValueError, match=r"^the default forward: task 'direct' gave outputs of shape"):
            example_accuracy(task, outputs, targets, 8)
    soft = torch.softmax(torch.randn(8, 3), 1)  # class probabilities: argmax against argmax
    assert torch.equal(example_accuracy(task, logits, soft, 8), (logits.argmax(1) == soft.argmax(1)).float())
    scored = blobs_task("scored", score=lambda outputs, targets: (outputs.argmax(1) == targets)[:, None].float())
    with pytest.raises(ValueError, match=r"^score: task 'scored'.* one value per example, shape \(8,\), got shape"):
        example_accuracy(scored, logits, labels, 8)


class AuxHead(nn.Module):
    """An auxiliary head in training, ``(logits, aux)``; the logits alone in evaluation (``squash``: of a shape
    the accuracy does not read)."""

    def __init__(self, squash: bool = False) -> None:
        super().__init__()
        self.body, self.aux, self.squash = mlp(), nn.Linear(20, 3), squash

    def forward(self, x):
        logits, aux = self.body(x), self.aux(x)
        if self.training:
            return logits, aux
        return logits[:, :, None] if self.squash else logits


def _with_aux(outputs, targets):
    return (
        CE(outputs[0], targets) + 0.3 * CE(outputs[1], targets) if isinstance(outputs, tuple) else CE(outputs, targets)
    )


def test_a_training_forward_with_an_auxiliary_head_is_checked_as_evaluation_reads_it():
    task = blobs_task("aux", make_model=AuxHead, loss=_with_aux, optimizer=CountingSGD)
    record = run_one(task, "baseline", seed=0, steps=8, eval_points=1)
    assert record["steps"] == 8 and 0.5 < record["test_metric"] <= 1.0
    squashed = blobs_task(
        "aux-squashed", make_model=lambda: AuxHead(squash=True), loss=_with_aux, optimizer=CountingSGD
    )
    CountingSGD.steps = 0
    with pytest.raises(
        ValueError, match=r"^the default forward: task 'aux-squashed' gave outputs of shape \(32, 3, 1\)"
    ):
        run_one(squashed, "baseline", seed=0, steps=2, eval_points=1)
    assert CountingSGD.steps == 0


# ---- one logit per example (binary cross-entropy) ---------------------------------------------------------


def _binary(data_dir, quick):
    """The blobs, class 0 against the rest: float 0/1 targets."""
    data = blobs(data_dir, quick)
    (x, y), (x_test, y_test) = data.train, data.test
    return TaskData((x, (y == 0).float()), (x_test, (y_test == 0).float()))


class OneLogit(nn.Module):
    made: ClassVar[list[nn.Module]] = []

    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        self.body, self.squeeze = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 1)), squeeze
        OneLogit.made.append(self)

    def forward(self, x):
        out = self.body(x)
        return out.squeeze(1) if self.squeeze else out


def _bce(outputs, targets):
    return nn.functional.binary_cross_entropy_with_logits(outputs.reshape(-1), targets)


@pytest.mark.parametrize("squeeze", [False, True], ids=["B1", "B"])
def test_a_single_logit_bce_model_trains_and_its_accuracy_is_the_logits_sign(squeeze):
    task = blobs_task(f"bce-{squeeze}", make_model=lambda: OneLogit(squeeze), load_data=_binary, loss=_bce)
    OneLogit.made = []
    record = run_one(task, "baseline", seed=0, eval_points=1)
    (model,) = OneLogit.made
    x_test, y_test = _binary(None, False).test
    with torch.no_grad():
        by_hand = float(((model(x_test).reshape(-1) > 0).float() == y_test).float().mean())
    assert 0.5 < record["test_metric"] <= 1.0 and record["test_metric"] == pytest.approx(by_hand)


def test_a_probability_under_binary_cross_entropy_is_read_at_one_half():
    task = blobs_task("probability", loss=nn.functional.binary_cross_entropy)
    hits = example_accuracy(task, torch.tensor([0.7, 0.4, 0.2]), torch.tensor([1.0, 1.0, 1.0]))
    assert hits.tolist() == [1.0, 0.0, 0.0]


class OneProbability(OneLogit):
    """OneLogit ending in a sigmoid: its output is a probability."""

    def forward(self, x):
        return torch.sigmoid(self.body(x)).squeeze(1) if self.squeeze else nn.Sigmoid()(self.body(x))


def _bce_of_probabilities(model, batch):
    x, y = batch
    return nn.functional.binary_cross_entropy(model(x).reshape(-1), y)


@pytest.mark.parametrize("squeeze", [False, True], ids=["B1", "B"])
def test_a_sigmoid_output_under_a_batch_loss_is_refused_before_the_first_step_unless_its_loss_says_so(squeeze):
    # a batch_loss hook training on probabilities: read as logits, every example would count as class 1
    hooked = blobs_task(
        f"sigmoid-{squeeze}",
        make_model=lambda: OneProbability(squeeze),
        load_data=_binary,
        batch_loss=_bce_of_probabilities,
        optimizer=CountingSGD,
    )
    CountingSGD.steps = 0
    with pytest.raises(ValueError, match=r"comes from a sigmoid \(a probability\), but accuracy reads it as a logit"):
        run_one(hooked, "baseline", seed=0, steps=2, eval_points=1)
    assert CountingSGD.steps == 0
    declared = blobs_task(
        f"declared-{squeeze}",
        make_model=lambda: OneProbability(squeeze),
        load_data=_binary,
        loss=lambda outputs, targets: nn.functional.binary_cross_entropy(outputs.reshape(-1), targets),
    )
    with pytest.raises(ValueError, match="comes from a sigmoid"):  # a loss of its own does not say "probability"
        run_one(declared, "baseline", seed=0, steps=2, eval_points=1)
    said = blobs_task(
        f"said-{squeeze}",
        make_model=lambda: OneProbability(True),
        load_data=_binary,
        loss=nn.functional.binary_cross_entropy,
    )
    assert 0.0 <= run_one(said, "baseline", seed=0, steps=2, eval_points=1)["test_metric"] <= 1.0


def test_a_single_logit_with_class_index_targets_is_refused_before_the_first_step():
    three = blobs_task("one-of-three", make_model=lambda: OneLogit(True), loss=_bce_of_labels, optimizer=CountingSGD)
    CountingSGD.steps = 0
    with pytest.raises(
        ValueError, match=r"one output per example, read as a binary logit, .* \(\[0\.0, 1\.0, 2\.0\]\)"
    ):
        run_one(three, "baseline", seed=0, steps=2, eval_points=1)
    assert CountingSGD.steps == 0


def _bce_of_labels(outputs, labels):
    return nn.functional.binary_cross_entropy_with_logits(outputs, labels.float())


# ---- (dict, labels) batches and a Hugging Face model ---------------------------------------------------------

IDS = torch.randint(1, 30, (48, 6), generator=torch.Generator().manual_seed(0))
LABELS = (IDS[:, 0] > 15).long()


def _inputs(rows):
    return {"input_ids": IDS[rows], "attention_mask": torch.ones_like(IDS[rows])}


def tiny_bert() -> nn.Module:
    config = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    TINY_BERTS.append(model)
    return model


TINY_BERTS: list[nn.Module] = []


def _dict_pairs(data_dir, quick):
    return TaskData((_inputs(slice(0, 32)), LABELS[:32]), (_inputs(slice(32, 48)), LABELS[32:]))


def bert_task() -> Task:
    return Task(
        name="tiny-bert",
        make_model=tiny_bert,
        sample_input=lambda: _inputs(slice(0, 2)),
        load_data=_dict_pairs,
        batch_size=8,
        epochs=2,
        lr=0.01,
        optimizer="adamw",
        weight_decay=0.0,
    )


def test_dict_inputs_and_labels_train_a_hugging_face_model():
    TINY_BERTS.clear()
    record = run_one(bert_task(), "baseline", seed=0, eval_points=1)
    (model,) = TINY_BERTS
    model.eval()
    with torch.no_grad():
        by_hand = float((model(**_inputs(slice(32, 48))).logits.argmax(1) == LABELS[32:]).float().mean())
    assert record["steps"] == 8 and 0.0 <= record["test_metric"] <= 1.0
    assert record["test_metric"] == pytest.approx(by_hand)


TASK_FILE = """
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification
from layerwise.tasks import Task, TaskData

IDS = torch.randint(1, 30, (48, 6), generator=torch.Generator().manual_seed(0))
LABELS = (IDS[:, 0] > 15).long()

def inputs(rows):
    return {"input_ids": IDS[rows], "attention_mask": torch.ones_like(IDS[rows])}

def data(data_dir, quick):
    return TaskData((inputs(slice(0, 32)), LABELS[:32]), (inputs(slice(32, 48)), LABELS[32:]))

def bert():
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return Task(name="file-bert", make_model=lambda: BertForSequenceClassification(config),
                sample_input=lambda: inputs(slice(0, 2)), load_data=data, batch_size=8, epochs=1, lr=0.01,
                optimizer="adamw", weight_decay=0.0)

def blobs(data_dir, quick):
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(96) % 3
    return TaskData((x[:64], y[:64]), (x[64:], y[64:]))

def loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])

def targets_b1():
    return Task(name="file-targets-b1", make_model=lambda: nn.Linear(6, 3), sample_input=lambda: torch.zeros(2, 6),
                load_data=blobs, batch_size=16, epochs=1, batch_loss=loss,
                batch_outputs=lambda model, batch: (model(batch[0]), batch[1][:, None]))
"""


def _compare_file(capsys, spec, out):
    argv = ["compare", "--task", spec, "--methods", "baseline", "--budget", "steps", "--out", str(out)]
    code = cli.main([*argv, "--no-progress", "--eval-points", "1"])
    return code, capsys.readouterr().err


def test_task_files_run_or_are_refused_through_the_command(tmp_path, capsys):
    path = tmp_path / "job.py"
    path.write_text(TASK_FILE)
    code, error = _compare_file(capsys, f"{path}:bert", tmp_path / "bert")
    assert code == 0, error
    (record,) = [r for r in (tmp_path / "bert").rglob("*seed0.json")]
    assert record.exists()
    code, error = _compare_file(capsys, f"{path}:targets_b1", tmp_path / "b1")
    expected = "batch_outputs: task 'file-targets-b1' gave outputs of shape (16, 3) and targets of shape (16, 1)"
    assert code == 2 and error.startswith(f"layerwise compare: error: {expected}") and error.count("\n") == 1
    assert not (tmp_path / "b1" / "runs.sqlite").exists()


# ---- variable-length inputs ----------------------------------------------------------------------------------

LENGTHS = torch.randint(2, 12, (192,), generator=torch.Generator().manual_seed(1))
SEQUENCES = [torch.randn(int(n), 4) for n in LENGTHS]


def test_a_list_of_variable_length_tensors_as_inputs_is_refused_naming_collate_fn():
    labels = torch.zeros(192, dtype=torch.long)
    expected = (
        r"^train: the inputs are a list of 192 tensors of different lengths \(inputs\[0\] \d+, .*\(192 tensors\)\), "
        r"one per example; .* give variable-length examples as a Dataset and a Task collate_fn\(examples\) -> batch"
    )
    with pytest.raises(ValueError, match=expected):
        TaskData((SEQUENCES, labels), (SEQUENCES[:8], labels[:8]))
    same_length = [torch.zeros(5) for _ in range(192)]
    with pytest.raises(ValueError, match=r"^train: inputs hold 5 examples but targets 192 \(a list of one tensor per"):
        TaskData((same_length, labels), (SEQUENCES[:8], labels[:8]))
    with pytest.raises(
        ValueError, match=r"^train: the inputs' tensors disagree .*\(inputs\['ids'\] 8, inputs\['mask'\] 7\)"
    ):
        TaskData(({"ids": torch.zeros(8, 3), "mask": torch.zeros(7, 3)}, labels[:8]), (SEQUENCES[:8], labels[:8]))


class Sequences(Dataset):
    def __len__(self):
        return len(SEQUENCES)

    def __getitem__(self, i):
        return SEQUENCES[i], int(LENGTHS[i] > 6)


def as_list(examples):
    """Keeps the sequences as a list, one tensor per example: not a batch the loop can count or slice."""
    return [x for x, _ in examples], torch.tensor([y for _, y in examples])


class MeanOfEach(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, sequences):
        return self.fc(torch.stack([s.mean(0) for s in sequences]))


def test_a_collate_fn_returning_a_list_of_sequences_is_refused_before_the_first_step():
    task = Task(
        name="sequences",
        make_model=MeanOfEach,
        sample_input=lambda: ([torch.zeros(3, 4)],),
        load_data=lambda d, q: TaskData(Sequences(), Sequences()),
        collate_fn=as_list,
        batch_size=16,
        optimizer=CountingSGD,
    )
    CountingSGD.steps = 0
    with pytest.raises(ValueError, match=r"^collate_fn: a batch's tensors disagree on how many examples it holds"):
        run_one(task, "baseline", seed=0, steps=2, eval_points=1)
    assert CountingSGD.steps == 0


# ---- the check leaves the run as it was --------------------------------------------------------------------


def test_checking_a_batch_leaves_the_generators_and_the_modes_as_they_were():
    model = nn.Sequential(nn.Linear(20, 16), nn.Dropout(0.5), nn.Linear(16, 3), nn.BatchNorm1d(3))
    model[3].eval()  # a module the caller keeps in eval mode
    task = _hook_task("untouched", lambda m, batch: (m(batch[0]), batch[1]))
    data = blobs(None, False)
    before, stats = torch.get_rng_state(), model[3].running_mean.clone()
    task.check_batch(model, (data.train[0][:32], data.train[1][:32]))
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(model[3].running_mean, stats)
    assert [m.training for m in model] == [True, True, True, False] and model.training


def test_good_hooks_train_as_before():
    task = _hook_task("good", lambda model, batch: (model(batch[0]), batch[1]))
    plain = blobs_task("plain", optimizer=CountingSGD)
    hooked, unhooked = (run_one(t, "baseline", seed=0, steps=6, eval_points=1) for t in (task, plain))
    assert hooked["train_loss"] == unhooked["train_loss"] and hooked["test_metric"] == unhooked["test_metric"]
    model = mlp()
    data = blobs(None, False)
    with torch.no_grad():
        by_hand = float((model(data.test[0]).argmax(1) == data.test[1]).float().mean())
    assert evaluate(model, data.test, task)["accuracy"] == pytest.approx(by_hand)
