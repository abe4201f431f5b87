"""FrozenPrefixCache never serves an activation the prefix would not compute (issue 38).

Each case trains the same model with and without the cache and compares the losses, or expects
the refusal: data-dependent control flow across a cut, a prefix with its own torch.Generator, a
frozen weight written through ``.data``, a forward that edits its input in place, non-integer
indices, and (where no trace can see) the self-check.
"""

from contextlib import nullcontext

import pytest
import torch
from torch import nn

import layerwise
from layerwise import Freezer, FrozenPrefixCache
from layerwise.tasks.models import ResNetCNN
from layerwise.training import seeded_indices

N = 64
X = torch.randn(N, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(1))


def _train(model, frozen, *, cache=None, steps=12, edit=None):
    """Train ``model`` (its groups: its children) with ``frozen`` frozen; returns the losses.

    ``cache``: FrozenPrefixCache options, None for no cache. ``edit(step, model)`` runs before each step.
    """
    part = layerwise.explicit(model, {name: [child] for name, child in model.named_children()})
    opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
    freezer = Freezer(model, opt)
    freezer.freeze(*frozen)
    store = None if cache is None else FrozenPrefixCache(model, freezer, N, same_inputs=True, **cache)
    model.train()
    losses = []
    for step, _, index in seeded_indices(N, 16, seed=0, steps=steps):
        if edit is not None:
            edit(step, model)
        with store.batch(index) if store is not None else nullcontext():
            loss = nn.functional.cross_entropy(model(X[index]), Y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, store


def _fresh(make):
    torch.manual_seed(0)
    return make()


# ---- 1. data-dependent control flow across a cut --------------------------------------------------


class _Branchy(nn.Module):
    """A frozen prefix, then a branch on its output's mean: ``b1(h) if h.mean() > T else b2(h)``."""

    def __init__(self):
        super().__init__()
        self.prefix = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.b1 = nn.Linear(8, 8)
        self.b2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():  # the threshold between the batches' means: both branches are taken
            batches = [index for _, _, index in seeded_indices(N, 16, seed=0, steps=8)]
            means = sorted(float(self.prefix(X[index]).mean()) for index in batches)
        self.threshold = means[len(means) // 2]

    def forward(self, x):
        h = self.prefix(x)
        h = self.b1(h) if h.mean() > self.threshold else self.b2(h)
        return self.head(torch.relu(h))


def test_a_branch_on_the_prefix_output_moves_the_cut_before_it_and_training_is_unchanged():
    plain, _ = _train(_fresh(_Branchy), ["prefix", "b1", "b2"])
    with pytest.warns(UserWarning, match=r"turns a tensor .* into a Python value .*branch decision"):
        cached, cache = _train(_fresh(_Branchy), ["prefix", "b1", "b2"], cache={})
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert cache.boundary == "prefix" and cache.stats["hits"] > 0


def test_a_branch_on_the_prefix_output_is_refused_with_shallower_raise():
    with pytest.raises(ValueError, match=r"shallower='raise'.*into a Python value"):
        _train(_fresh(_Branchy), ["prefix", "b1", "b2"], cache={"shallower": "raise"})


# ---- 2. a prefix that draws from its own generator -------------------------------------------------


class _OwnNoise(nn.Module):
    """A frozen layer adding noise from its own generator, in inference mode too."""

    def __init__(self, kind):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.kind = kind
        self.g = torch.Generator().manual_seed(3)

    def forward(self, x):
        if self.kind == "randn":
            return self.linear(x) + 0.1 * torch.randn(x.shape, generator=self.g)
        return self.linear(x) + torch.empty_like(x).uniform_(0, 0.1, generator=self.g)


@pytest.mark.parametrize("kind", ["randn", "uniform_"])
def test_a_prefix_drawing_from_its_own_generator_is_refused(kind):
    model = _fresh(lambda: nn.Sequential(_OwnNoise(kind), nn.ReLU(), nn.Linear(8, 3)))
    state = model.state_dict()
    with pytest.raises(ValueError, match=rf"draws random numbers from its own torch.Generator \('{kind}'\)"):
        _train(model, ["0"], cache={})
    assert all(torch.equal(a, b) for a, b in zip(state.values(), model.state_dict().values()))


class _NoiseBetween(nn.Module):
    """Noise from its own generator drawn by the parent, between two frozen modules."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.g = torch.Generator().manual_seed(3)

    def forward(self, x):
        h = self.a(x) + 0.1 * torch.randn(x.shape[0], 8, generator=self.g)
        return self.head(torch.relu(self.b(h)))


def test_a_draw_from_its_own_generator_between_prefix_modules_is_refused():
    model = _fresh(_NoiseBetween)
    with pytest.raises(ValueError, match=r"draws random numbers from its own torch.Generator \('randn'\)"):
        _train(model, ["a", "b"], cache={})


# ---- 3. a frozen weight written through .data or set_ ----------------------------------------------


def _conv():
    return nn.Sequential(nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))


def _halve(how):
    def edit(step, model):
        if step != 6:  # the second epoch: every row is stored
            return
        weight = model[1].weight
        if how == "data.mul_":
            weight.data.mul_(0.5)
        elif how == "data =":
            weight.data = weight.data * 0.5
        else:
            with torch.no_grad():
                weight.set_(weight.detach() * 0.5)

    return edit


@pytest.mark.parametrize("how", ["data.mul_", "data =", "set_"])
def test_a_frozen_weight_written_behind_autograd_drops_the_stored_rows(how):
    plain, _ = _train(_fresh(_conv), ["1"], edit=_halve(how))
    cached, cache = _train(_fresh(_conv), ["1"], cache={}, edit=_halve(how))
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert cache.stats["misses"] == 2 * N  # every row computed once before the edit (step 6) and once after it


def test_the_per_batch_checksum_is_cheap_next_to_the_prefix():
    import time

    from layerwise.prefix_cache import _stamp

    torch.manual_seed(0)
    model = ResNetCNN(width=16)
    prefix = list(model.stem.parameters()) + list(model.layer1.parameters()) + list(model.layer2.parameters())
    x = torch.randn(64, 1, 28, 28)

    def seconds(work, repeat=20):
        work()
        start = time.perf_counter()
        for _ in range(repeat):
            work()
        return (time.perf_counter() - start) / repeat

    with torch.no_grad():
        forward = seconds(lambda: model.layer2(model.layer1(model.stem(x))))
    check = seconds(lambda: _stamp(prefix))
    assert check < 0.1 * forward, (check, forward)


# ---- 4. a forward that edits its input in place ----------------------------------------------------


class _EditsInput(nn.Module):
    """``x.sub_(0.5)`` before the prefix; ``x`` read again after it."""

    def __init__(self):
        super().__init__()
        self.prefix = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x.sub_(0.5)
        return self.head(torch.cat([self.prefix(x), x], 1))


def test_a_forward_that_edits_its_input_in_place_trains_as_without_the_cache():
    plain, _ = _train(_fresh(_EditsInput), ["prefix"])
    cached, cache = _train(_fresh(_EditsInput), ["prefix"], cache={})
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert cache.stats["hits"] > 0 and cache.stats["misses"] > 0
    x = X[:16].clone()
    with cache.batch(torch.arange(16)):
        cache.model(x)
    assert torch.equal(x, X[:16] - 0.5)  # edited once, by the forward itself


# ---- 11. non-integer indices -----------------------------------------------------------------------


@pytest.mark.parametrize("indices", [[0.5, 1.5], torch.tensor([0.0, 1.0]), torch.tensor([True, False])])
def test_non_integer_indices_are_refused(indices):
    model = _fresh(_conv)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["name"] = "all"
    cache = FrozenPrefixCache(model, Freezer(model, opt), N, same_inputs=True)
    with pytest.raises(TypeError, match=r"indices: must be integer example indices .*got dtype"), cache.batch(indices):
        pass


# ---- the self-check: what no trace can see ---------------------------------------------------------


class _Scaled(nn.Module):
    """A prefix reading Python state (``scale``) that the trace cannot see."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.scale = 1.0

    def forward(self, x):
        return self.linear(x) * self.scale


def _rescale(step, model):
    model[0].scale = 1.0 + step


def test_the_self_check_stops_a_run_whose_served_rows_are_stale():
    with pytest.raises(RuntimeError, match=r"my-run: self-check failed: .*a batch that served stored rows"):
        model = _fresh(lambda: nn.Sequential(_Scaled(), nn.ReLU(), nn.Linear(8, 3)))
        _train(model, ["0"], cache={"label": "my-run", "verify": 2}, edit=_rescale)
    # without it the run diverges silently: the limit docs/guide/prefix-cache.md states
    model = _fresh(lambda: nn.Sequential(_Scaled(), nn.ReLU(), nn.Linear(8, 3)))
    plain, _ = _train(_fresh(lambda: nn.Sequential(_Scaled(), nn.ReLU(), nn.Linear(8, 3))), ["0"], edit=_rescale)
    unchecked, _ = _train(model, ["0"], cache={}, edit=_rescale)  # verify=0, the default
    assert unchecked[:4] == pytest.approx(plain[:4]) and unchecked[4:] != pytest.approx(plain[4:])


def test_the_self_check_passes_a_sound_run_and_counts_its_batches():
    plain, _ = _train(_fresh(_conv), ["1"])
    cached, cache = _train(_fresh(_conv), ["1"], cache={"verify": 3})
    assert cached == plain
    assert cache.stats["verified"] == 6  # 3 batches that computed rows, 3 that served them


@pytest.mark.parametrize("verify", [-1, 1.5, True])
def test_a_verify_that_is_not_a_count_is_refused(verify):
    model = _fresh(_conv)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["name"] = "all"
    with pytest.raises(ValueError, match="verify: must be a number of batches"):
        FrozenPrefixCache(model, Freezer(model, opt), N, same_inputs=True, verify=verify)


class _WithEmptyBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("unused", torch.zeros(0, 4))  # an empty 2-D tensor in the prefix

    def forward(self, x):
        return self.linear(x)


def test_a_prefix_holding_an_empty_tensor_is_stamped_and_served():
    make = lambda: nn.Sequential(_WithEmptyBuffer(), nn.ReLU(), nn.Linear(8, 3))  # noqa: E731
    plain, _ = _train(_fresh(make), ["0"])
    cached, cache = _train(_fresh(make), ["0"], cache={})
    assert cached == plain and cache.stats["hits"] > 0
