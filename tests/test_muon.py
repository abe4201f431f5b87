"""muon_split and ReshapedMuon: the split rule, equality with torch's Muon and AdamW run alone, the
reshaped orthogonalisation against a hand-written Newton-Schulz reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import layerwise
from layerwise import ReshapedMuon, muon_split
from layerwise.muon import ADAMW_DEFAULTS, MUON_DEFAULTS

STEPS = 5


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.mid = nn.Linear(4 * 16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.relu(self.mid(x.flatten(1))))


class TextNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.norm(self.emb(x).mean(1)))))


def conv_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + step)
    return torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def backward(model: nn.Module, step: int) -> None:
    x, y = conv_batch(step)
    nn.functional.cross_entropy(model(x), y).backward()


def split_of(model: nn.Module, sample: torch.Tensor, **options) -> dict[str, set[str]]:
    opt = muon_split(layerwise.by_layer(model, sample_input=sample), **options)
    names = {id(p): n for n, p in model.named_parameters()}
    parts = zip(opt.part_names, opt.optimizers)
    return {part: {names[id(p)] for g in o.param_groups for p in g["params"]} for part, o in parts}


def test_the_split_rule_sends_embeddings_head_biases_and_norms_to_adamw():
    text = split_of(TextNet(), torch.zeros(1, 5, dtype=torch.long))
    assert text == {
        "muon": {"mid.weight"},
        "adamw": {"emb.weight", "norm.weight", "norm.bias", "mid.bias", "head.weight", "head.bias"},
    }
    conv = split_of(ConvNet(), torch.zeros(1, 1, 4, 4))
    assert conv["muon"] == {"conv.weight", "mid.weight"}
    conv = split_of(ConvNet(), torch.zeros(1, 1, 4, 4), conv="adamw")
    assert conv["muon"] == {"mid.weight"} and "conv.weight" in conv["adamw"]


def test_groups_keep_their_partition_name_and_biases_and_norms_get_no_decay():
    opt = muon_split(ConvNet(), sample_input=torch.zeros(1, 1, 4, 4))
    assert [g["name"] for g in opt.optimizers[0].param_groups] == ["conv", "mid"]
    adamw = opt.optimizers[1].param_groups
    assert [(g["name"], g["weight_decay"]) for g in adamw] == [
        ("conv", 0.0),
        ("bn", 0.0),
        ("mid", 0.0),
        ("head", 0.01),
        ("head", 0.0),
    ]
    assert type(opt.optimizers[0]) is ReshapedMuon
    plain = muon_split(ConvNet(), conv="adamw", sample_input=torch.zeros(1, 1, 4, 4))
    assert type(plain.optimizers[0]) is torch.optim.Muon


def alone(model: ConvNet) -> list[torch.optim.Optimizer]:
    """torch's Muon on the hidden matrix and AdamW on the rest, as the authors' README writes them."""
    rest = [model.conv.weight, model.head.weight]
    exempt = [model.conv.bias, model.bn.weight, model.bn.bias, model.mid.bias, model.head.bias]
    return [
        torch.optim.Muon([model.mid.weight], **MUON_DEFAULTS),
        torch.optim.AdamW([{"params": rest}, {"params": exempt, "weight_decay": 0.0}], **ADAMW_DEFAULTS),
    ]


@pytest.mark.parametrize("conv", ["adamw", "reshape"])
def test_each_part_equals_its_optimizer_run_alone_step_for_step(conv):
    ours, theirs = ConvNet(), ConvNet()
    opt = muon_split(ours, conv=conv, sample_input=torch.zeros(1, 1, 4, 4))
    separate = alone(theirs)
    if conv == "reshape":  # the conv weight: ReshapedMuon alone
        separate[1].param_groups[0]["params"] = [theirs.head.weight]
        separate.append(ReshapedMuon([theirs.conv.weight], **MUON_DEFAULTS))
    for step in range(STEPS):
        for model, optimizers in ((ours, [opt]), (theirs, separate)):
            for o in optimizers:
                o.zero_grad()
            backward(model, step)
            for o in optimizers:
                o.step()
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            assert torch.equal(p, q), (step, name)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Keller Jordan's quintic iteration, written out: X <- aX + (bA + cA^2)X with A = XX^T, in bfloat16
    (each product fused as ``addmm``, as torch rounds it, so the comparison can be exact)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def test_reshaped_muon_matches_a_hand_written_newton_schulz_reference_step_for_step():
    torch.manual_seed(1)
    weight = nn.Parameter(torch.randn(6, 3, 3, 3))
    reference = weight.detach().clone()
    lr, momentum, decay = 0.02, 0.95, 0.1
    opt = ReshapedMuon([weight], lr=lr, momentum=momentum, weight_decay=decay)
    buffer = torch.zeros_like(reference)
    for step in range(STEPS):
        grad = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(step))
        weight.grad = grad.clone()
        opt.step()

        buffer = buffer.lerp(grad, 1 - momentum)  # momentum * buffer + (1 - momentum) * grad
        update = grad.lerp(buffer, momentum)  # Nesterov: (1 - momentum) * grad + momentum * buffer
        ortho = newton_schulz(update.reshape(6, 27)).float().reshape(6, 3, 3, 3)  # out x (in * kh * kw)
        scale = math.sqrt(max(1.0, 6 / 27))  # "original": the matrix (6, 27) is wide, so 1
        reference = (reference * (1 - lr * decay)).add(ortho, alpha=-lr * scale)
        assert torch.equal(weight.detach(), reference), step
        assert torch.equal(opt.state[weight]["momentum_buffer"], buffer), step
    assert opt.state[weight]["momentum_buffer"].shape == weight.shape


def test_the_reference_is_close_to_orthogonal():
    g = torch.randn(6, 27, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(newton_schulz(g).float())
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_freezeout_runs_over_the_muon_split():
    model = ConvNet()
    opt = muon_split(model, sample_input=torch.zeros(1, 1, 4, 4))
    freezeout = layerwise.FreezeOut(model, opt, total_steps=2 * STEPS)
    for step in range(2 * STEPS):
        opt.zero_grad()
        backward(model, step)
        opt.step()
        freezeout.step()
    assert freezeout.freezer.frozen[0] == "conv" and not model.conv.weight.requires_grad


def test_bad_input_is_refused_naming_the_argument():
    model = ConvNet()
    with pytest.raises(ValueError, match="conv"):
        muon_split(model, conv="flatten", sample_input=torch.zeros(1, 1, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="muon_options"):
        muon_split(model, muon_options=0.02, sample_input=torch.zeros(1, 1, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="partition_or_model: no hidden weight matrix"):
        muon_split(nn.Linear(4, 2), sample_input=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="params: ReshapedMuon takes weights of 2 or more"):
        ReshapedMuon([model.conv.bias])
    with pytest.raises(ValueError, match="Muon only supports 2D"):  # what the split never hands torch's Muon
        torch.optim.Muon([model.conv.weight])
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


RESUME_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_muon import ConvNet, backward
from layerwise import muon_split
model = ConvNet()
opt = muon_split(model, conv={conv!r}, sample_input=torch.zeros(1, 1, 4, 4))
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max={total})
first, last, path = {first}, {last}, {path!r}
if first:
    saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved["model"]); opt.load_state_dict(saved["opt"]); sched.load_state_dict(saved["sched"])
for step in range(first, last):
    opt.zero_grad()
    backward(model, step)
    opt.step()
    sched.step()
torch.save({{"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}}, path)
"""


@pytest.mark.parametrize("conv", ["reshape", "adamw"])
def test_the_muon_split_resumes_bitwise_in_a_new_process(tmp_path, conv):
    import subprocess
    import sys
    from pathlib import Path

    def run(first: int, last: int, path: Path) -> dict:
        code = RESUME_SCRIPT.format(
            tests=str(Path(__file__).parent), conv=conv, total=2 * STEPS, first=first, last=last, path=str(path)
        )
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
        return torch.load(path, weights_only=True)

    straight = run(0, 2 * STEPS, tmp_path / "straight.pt")
    run(0, STEPS, tmp_path / "resumed.pt")  # one process stops half way ...
    resumed = run(STEPS, 2 * STEPS, tmp_path / "resumed.pt")  # ... a new one loads the file and goes on
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert resumed["sched"]["last_epoch"] == 2 * STEPS
