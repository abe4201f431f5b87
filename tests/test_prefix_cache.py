"""FrozenPrefixCache: training with it equals training without it; refusals; resume; bad input.

Its soundness (issue 38): it never serves an activation the prefix would not compute. Each case
trains the same model with and without the cache and compares the losses, or expects the refusal:
data-dependent control flow across a cut, a prefix with its own torch.Generator, a frozen weight
written through ``.data``, a forward that edits its input in place, non-integer indices, and (where
no trace can see) the self-check.
"""

from contextlib import nullcontext

import pytest
import torch
from torch import nn

import layerwise
from layerwise import FreezeOut, Freezer, FrozenPrefixCache, GradualUnfreezing
from layerwise.tasks.models import ResNetCNN
from layerwise.training import seeded_indices

N = 96
X = torch.randn(N, 1, 12, 12, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (N,), generator=torch.Generator().manual_seed(1))


def _resnet():
    torch.manual_seed(0)
    return ResNetCNN(width=4)


def _setup(model, technique, steps):
    part = layerwise.by_block(model, sample_input=X[:2])  # stem, layer1, layer2, layer3, fc
    opt = torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9)
    if technique == "freezeout":
        stepper = FreezeOut(model, opt, steps, t0=0.3, strategy="linear")
        return opt, stepper, stepper.freezer
    freezer = Freezer(model, opt)
    return opt, GradualUnfreezing(freezer, every=9, start=1), freezer


def _train(technique, *, cache=None, steps=36, start=0, stop=None, state=None, model=None, opt_state=None):
    """The plain loop, with or without a cache (``cache``: FrozenPrefixCache options); returns
    the model, the losses, the cache, the optimizer and the technique."""
    model = model or _resnet()
    opt, stepper, freezer = _setup(model, technique, steps)
    if state is not None:
        opt.load_state_dict(opt_state)
        stepper.load_state_dict(state)
    store = None if cache is None else FrozenPrefixCache(model, freezer, N, same_inputs=True, **cache)
    losses = []
    model.train()
    for step, _, index in seeded_indices(N, 16, seed=0, steps=stop or steps):
        if step < start:
            continue
        with store.batch(index) if store is not None else nullcontext():
            loss = nn.functional.cross_entropy(model(X[index]), Y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        stepper.step()
        losses.append(loss.item())
    return model, losses, store, opt, stepper


def _same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_freezeout_with_the_cache_equals_training_without_it_bitwise():
    plain, plain_losses, _, _, fo = _train("freezeout")
    cached, losses, cache, _, _ = _train("freezeout", cache={})
    assert len({at for at in fo.frozen_at if at is not None}) >= 3  # several freeze events
    assert losses == plain_losses and _same_params(plain, cached)
    stats = cache.stats
    assert stats["hits"] > 0 and stats["misses"] > 0 and stats["advanced"] > 0  # the boundary moved deeper
    assert cache.boundary in {"layer1", "layer2", "layer3", "fc"}
    assert stats["stored_bytes"] > 0 and stats["saved_seconds"] > 0


def test_gradual_unfreezing_with_the_cache_equals_training_without_it_bitwise():
    plain, plain_losses, _, _, _ = _train("unfreezing")
    cached, losses, cache, _, _ = _train("unfreezing", cache={})
    assert losses == plain_losses and _same_params(plain, cached)
    assert cache.stats["hits"] > 0
    assert cache.boundary == "stem"  # at the end only the stem is frozen: the deeper entries were dropped


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage_stays_close(dtype):
    plain, plain_losses, _, _, _ = _train("freezeout")
    cached, losses, cache, _, _ = _train("freezeout", cache={"dtype": dtype})
    assert cache.stats["hits"] > 0
    tolerance = 0.05 if dtype is torch.float16 else 0.1  # relative, on the final weights of what trained
    for (name, p), q in zip(plain.named_parameters(), cached.parameters()):
        assert torch.allclose(p, q, rtol=tolerance, atol=tolerance * p.abs().max().item()), name
    assert abs(losses[-1] - plain_losses[-1]) < 0.1 * abs(plain_losses[-1])


def test_disk_store_and_a_byte_cap(tmp_path):
    plain, plain_losses, _, _, _ = _train("freezeout")
    cached, losses, _, _, _ = _train("freezeout", cache={"directory": tmp_path})
    assert losses == plain_losses and _same_params(plain, cached)
    assert list(tmp_path.glob("*.bin"))
    _, capped_losses, small, _, _ = _train("freezeout", cache={"max_bytes": 20_000})
    assert capped_losses == plain_losses
    assert 0 < small.stats["stored_bytes"] <= 20_000
    assert small.stats["stored_rows"] < N


def test_resume_rebuilds_the_cache_and_equals_an_uninterrupted_run():
    whole, whole_losses, _, _, _ = _train("freezeout", cache={})
    # interrupt after 10 steps: train 10, save, rebuild everything, resume with a fresh cache
    model, losses, _, opt, fo = _train("freezeout", cache={}, stop=10)
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "fo": fo.state_dict()}
    fresh = _resnet()
    fresh.load_state_dict(saved["model"])
    resumed, rest, cache, _, _ = _train(
        "freezeout", cache={}, start=10, model=fresh, state=saved["fo"], opt_state=saved["opt"]
    )
    assert losses + rest == whole_losses and _same_params(whole, resumed)
    assert cache.stats["misses"] > 0  # rebuilt from the input, not loaded


def _frozen_resnet(*groups, **options):
    model = _resnet()
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=X[:2]).param_groups(lr=0.05))
    freezer = Freezer(model, opt)
    freezer.freeze(*groups)
    return model, FrozenPrefixCache(model, freezer, N, same_inputs=True, **options)


def test_a_crossing_skip_connection_moves_the_cut_back_with_a_warning_or_is_refused():
    # stem.0, stem.1 and layer1.conv1 frozen: layer1's shortcut reads the stem's output past conv1
    model, cache = _frozen_resnet("stem.0", "stem.1", "layer1.conv1")
    with pytest.warns(UserWarning, match="skip connection"), cache.batch(torch.arange(16)):
        model(X[:16])
    assert cache.boundary == "stem"
    model, strict = _frozen_resnet("stem.0", "stem.1", "layer1.conv1", shallower="raise")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"shallower='raise': .*skip connection"), strict.batch(torch.arange(16)):
        model(X[:16])
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


class _DropoutFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(self.drop(x))))


def _dropout_model():
    torch.manual_seed(0)
    model = _DropoutFirst()
    return model, torch.randn(16, 8)


def test_a_dropout_in_training_mode_ends_the_prefix_before_it():
    model, x = _dropout_model()
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=x).param_groups(lr=0.1))
    freezer = Freezer(model, opt)
    freezer.freeze("body.0")  # the Freezer puts `body` (and its dropout) in inference mode; `drop` trains
    model.train()
    cache = FrozenPrefixCache(model, freezer, 16, same_inputs=True)
    rng = torch.get_rng_state()
    warning = r"'drop' \(Dropout\) is in training mode, so the prefix ends before it"
    with pytest.warns(UserWarning, match=warning), cache.batch(torch.arange(16)):
        model(x)
    assert cache.boundary is None and cache.stats["uncached"] == 16  # nothing lies before `drop`
    assert not torch.equal(rng, torch.get_rng_state())  # the dropout drew, as without the cache
    model.drop.eval()
    with cache.batch(torch.arange(16)):
        model(x)
    assert cache.boundary == "body" and cache.stats["misses"] == 16


def test_a_frozen_module_with_a_dropout_in_training_mode_is_refused():
    model, x = _dropout_model()
    model.body.requires_grad_(False)  # frozen by hand: no Freezer puts `body` in inference mode
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    for group in opt.param_groups:
        group["name"] = "head"
    freezer = Freezer(model, opt)
    model.train()
    model.drop.eval()
    cache = FrozenPrefixCache(model, freezer, 16, same_inputs=True)
    rng = torch.get_rng_state()
    refusal = r"'body.1' \(Dropout\) of a frozen module is in training mode"
    with pytest.raises(ValueError, match=refusal), cache.batch(torch.arange(16)):
        model(x)
    assert torch.equal(rng, torch.get_rng_state()) and cache.stats["misses"] == 0


def test_random_augmentation_is_refused():
    model, _ = _frozen_resnet("stem.0")
    freezer = _.freezer
    with pytest.raises(ValueError, match=r"same_inputs: must be True .*augmentation"):
        FrozenPrefixCache(model, freezer, N, same_inputs=False)
    with pytest.raises(TypeError, match="same_inputs"):
        FrozenPrefixCache(model, freezer, N)  # no default: the flag is a declaration


@pytest.mark.parametrize("cap", [0, -5, 1.5, "1GB", True])
def test_a_cap_that_is_not_a_positive_number_of_bytes_is_refused(cap):
    model, cache = _frozen_resnet("stem.0")
    with pytest.raises(ValueError, match="max_bytes: must be a positive number of bytes"):
        FrozenPrefixCache(model, cache.freezer, N, same_inputs=True, max_bytes=cap)


def test_indices_missing_or_wrong_are_refused_before_anything_changes():
    model, cache = _frozen_resnet("stem.0", "stem.1")
    model.train()
    buffers = [b.clone() for b in model.buffers()]
    with pytest.raises(ValueError, match="indices: the model was called in training mode outside"):
        model(X[:16])
    with (
        pytest.raises(ValueError, match="indices: 8 indices, but no input tensor of the forward has 8 rows"),
        cache.batch(torch.arange(8)),
    ):
        model(X[:16])
    with (
        pytest.raises(ValueError, match=r"indices: must lie in \[0, num_examples=96\)"),
        cache.batch(torch.arange(90, 106)),
    ):
        model(X[:16])
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert cache.stats["misses"] == 0 and cache.stats["stored_rows"] == 0
    model.eval()
    model(X[:16])  # evaluation needs no indices


def test_a_frozen_set_that_is_not_a_prefix_is_refused():
    model, cache = _frozen_resnet("layer2.conv1")
    with (
        pytest.raises(ValueError, match=r"freezer: the frozen groups \['layer2.conv1'\] are not a prefix"),
        cache.batch(torch.arange(16)),
    ):
        model(X[:16])


def test_a_changed_prefix_weight_drops_its_entries():
    model, cache = _frozen_resnet("stem.0", "stem.1")
    for _ in range(2):
        with cache.batch(torch.arange(16)):
            model(X[:16])
    assert cache.stats["hits"] == 16
    with torch.no_grad():
        model.stem[0].weight.mul_(2)  # a load_state_dict or a hand edit: the prefix is another function
    with cache.batch(torch.arange(16)):
        out = model(X[:16])
    assert cache.stats["hits"] == 16 and cache.stats["misses"] == 32
    cache.remove()
    assert torch.equal(out, model(X[:16]))


def test_the_pretrained_minilm_prefix_is_cut_at_an_encoder_layer():
    pytest.importorskip("transformers")
    from layerwise.tasks import get_task

    task = get_task("minilm-finetune")
    try:
        model = task.make_model()
    except (ImportError, FileNotFoundError) as error:
        pytest.skip(f"pretrained MiniLM not installed: {error}")
    part = task.partition_of(model)
    opt = torch.optim.AdamW(part.param_groups(lr=1e-5))
    freezer = Freezer(model, opt)
    freezer.freeze("early", "middle layers")
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0]] * 4 + [[101, 2088, 102, 0, 0, 0]] * 4)
    model.train()
    torch.manual_seed(0)
    expected = model(ids)
    cache = FrozenPrefixCache(model, freezer, 8, same_inputs=True)
    for _ in range(2):
        torch.manual_seed(0)
        with cache.batch(torch.arange(8)):
            out = model(ids)
        assert torch.equal(out, expected)  # dropout in the trainable layers draws the same numbers
    assert cache.boundary == "model.bert.encoder.layer.3" and cache.stats["hits"] == 8


def test_the_cache_bench_runs_quick_and_predicts_before_training():
    from layerwise.bench.cache_bench import predicted_savings, simulate_served
    from layerwise.bench.suite import run_bench

    # unfreezing drops the deeper entries; a prefix frozen again is served only once seen again
    assert simulate_served([2, 2, 1, 1, 2], examples=2, batch=2, seed=0) == [0.0, 1.0, 0.0, 1.0, 0.0]
    # freezing a second group that moves no cut (both counts cut at depth 5) keeps the stored rows
    assert simulate_served([1, 2, 2], examples=2, batch=2, seed=0, cuts=[0, 5, 5]) == [0.0, 1.0, 1.0]
    assert simulate_served([1, 2, 2], examples=2, batch=2, seed=0) == [0.0, 0.0, 1.0]
    # half the steps with 1 group frozen, served on the second: (1 + 0.8 + 0.4) / 3 steps of 1.0 each
    saving = predicted_savings([0, 1, 1], [0.0, 0.0, 1.0], plain=[1.0, 0.8], cached=[1.0, 0.4])
    assert saving["without_cache"] == pytest.approx(1 - 2.6 / 3, abs=1e-4)
    assert saving["with_cache"] == pytest.approx(1 - 2.2 / 3, abs=1e-4)
    assert saving["with_cache_all_served"] == pytest.approx(1 - 1.8 / 3, abs=1e-4)
    result = run_bench("cache", quick=True)["cases"]["freezeout"]
    assert result["same_results_as_uncached"]
    assert set(result["measured"]) >= {"saving_without_cache", "saving_with_cache", "hit_rate", "cache_speedup"}
    assert set(result["predicted"]) == {"without_cache", "with_cache", "with_cache_all_served", "served_share"}
    # the simulated share of served rows is the run's hit rate (both on the run's own data order)
    assert result["predicted"]["served_share"] == pytest.approx(result["measured"]["hit_rate"], abs=0.02)


class _Noisy(nn.Module):
    """A frozen layer that adds noise even in inference mode (no Dropout type to recognise)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x) + 0.1 * torch.randn_like(x)


def test_a_prefix_that_draws_random_numbers_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(_Noisy(), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 8)
    opt = torch.optim.SGD(layerwise.by_block(model, sample_input=x).param_groups(lr=0.1))
    freezer = Freezer(model, opt)
    freezer.freeze("0")
    cache = FrozenPrefixCache(model, freezer, 16, same_inputs=True)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="draws random numbers"), cache.batch(torch.arange(16)):
        model(x)
    assert torch.equal(rng, torch.get_rng_state()) and cache.stats["stored_rows"] == 0


class _PaddedBlock(nn.Module):
    """EfficientNet-Lite's block shape: an identity "padding" module first, a skip connection last."""

    def __init__(self, width):
        super().__init__()
        self.pad = nn.Identity()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(self.pad(x))) + x


def test_a_cut_at_an_identity_serves_every_alias_of_the_stored_tensor():
    # the deepest cut is block1.pad, whose output *is* the stem's: the skip reads it under both names
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(1, 4, 3, padding=1))
    model.add_module("block1", _PaddedBlock(4))
    model.add_module("head", nn.Sequential(nn.Flatten(), nn.Linear(4 * 12 * 12, 10)))
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=X[:2]).param_groups(lr=0.05))
    freezer = Freezer(model, opt)
    freezer.freeze("stem")
    expected = model(X[:16])
    cache = FrozenPrefixCache(model, freezer, N, same_inputs=True)
    for _ in range(2):  # a miss, then a hit
        with cache.batch(torch.arange(16)):
            assert torch.equal(model(X[:16]), expected)
    assert cache.boundary == "block1.pad" and cache.stats["hits"] == 16


class Trimming(nn.Module):
    """Token ids -> embeddings -> a mean; each batch cut to its longest row (as TextClassifier(trim=True))."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.body, self.head = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids[:, : int((ids != 0).sum(1).max())]
        return self.head(torch.relu(self.body(self.embed(ids))).mean(1))


def test_a_prefix_whose_rows_change_shape_between_batches_is_refused_with_the_reason():
    torch.manual_seed(0)
    ids = torch.randint(1, 20, (32, 6))
    ids[:16, 4:] = 0  # the first batch is 4 wide, the second 6
    model = Trimming()
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=ids[:2]).param_groups(lr=0.1), lr=0.1)
    freezer = Freezer(model, opt)
    freezer.freeze("embed")
    cache = FrozenPrefixCache(model, freezer, 32, same_inputs=True)
    for index in (torch.arange(16), torch.arange(16, 32)):
        refused = pytest.raises(ValueError, match="a row per example must keep its shape")
        with refused if index[0] else nullcontext(), cache.batch(index):
            nn.functional.cross_entropy(model(ids[index]), torch.zeros(16, dtype=torch.long)).backward()


# ---- soundness: never an activation the prefix would not compute (issue 38) ----------------------

ROWS = 64
INPUTS = torch.randn(ROWS, 8, generator=torch.Generator().manual_seed(0))
LABELS = torch.randint(0, 3, (ROWS,), generator=torch.Generator().manual_seed(1))


def _train_frozen(model, frozen, *, cache=None, steps=12, edit=None):
    """Train ``model`` (its groups: its children) with ``frozen`` frozen; returns the losses.

    ``cache``: FrozenPrefixCache options, None for no cache. ``edit(step, model)`` runs before each step.
    """
    part = layerwise.explicit(model, {name: [child] for name, child in model.named_children()})
    opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
    freezer = Freezer(model, opt)
    freezer.freeze(*frozen)
    store = None if cache is None else FrozenPrefixCache(model, freezer, ROWS, same_inputs=True, **cache)
    model.train()
    losses = []
    for step, _, index in seeded_indices(ROWS, 16, seed=0, steps=steps):
        if edit is not None:
            edit(step, model)
        with store.batch(index) if store is not None else nullcontext():
            loss = nn.functional.cross_entropy(model(INPUTS[index]), LABELS[index])
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
            batches = [index for _, _, index in seeded_indices(ROWS, 16, seed=0, steps=8)]
            means = sorted(float(self.prefix(INPUTS[index]).mean()) for index in batches)
        self.threshold = means[len(means) // 2]

    def forward(self, x):
        h = self.prefix(x)
        h = self.b1(h) if h.mean() > self.threshold else self.b2(h)
        return self.head(torch.relu(h))


def test_a_branch_on_the_prefix_output_moves_the_cut_before_it_and_training_is_unchanged():
    plain, _ = _train_frozen(_fresh(_Branchy), ["prefix", "b1", "b2"])
    with pytest.warns(UserWarning, match=r"turns a tensor .* into a Python value .*branch decision"):
        cached, cache = _train_frozen(_fresh(_Branchy), ["prefix", "b1", "b2"], cache={})
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert cache.boundary == "prefix" and cache.stats["hits"] > 0


def test_a_branch_on_the_prefix_output_is_refused_with_shallower_raise():
    with pytest.raises(ValueError, match=r"shallower='raise'.*into a Python value"):
        _train_frozen(_fresh(_Branchy), ["prefix", "b1", "b2"], cache={"shallower": "raise"})


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
        _train_frozen(model, ["0"], cache={})
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
        _train_frozen(model, ["a", "b"], cache={})


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
    plain, _ = _train_frozen(_fresh(_conv), ["1"], edit=_halve(how))
    cached, cache = _train_frozen(_fresh(_conv), ["1"], cache={}, edit=_halve(how))
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert cache.stats["misses"] == 2 * ROWS  # every row computed once before the edit (step 6) and once after it


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
    plain, _ = _train_frozen(_fresh(_EditsInput), ["prefix"])
    cached, cache = _train_frozen(_fresh(_EditsInput), ["prefix"], cache={})
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert cache.stats["hits"] > 0 and cache.stats["misses"] > 0
    x = INPUTS[:16].clone()
    with cache.batch(torch.arange(16)):
        cache.model(x)
    assert torch.equal(x, INPUTS[:16] - 0.5)  # edited once, by the forward itself


# ---- 11. non-integer indices -----------------------------------------------------------------------


@pytest.mark.parametrize("indices", [[0.5, 1.5], torch.tensor([0.0, 1.0]), torch.tensor([True, False])])
def test_non_integer_indices_are_refused(indices):
    model = _fresh(_conv)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["name"] = "all"
    cache = FrozenPrefixCache(model, Freezer(model, opt), ROWS, same_inputs=True)
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
        _train_frozen(model, ["0"], cache={"label": "my-run", "verify": 2}, edit=_rescale)
    # without it the run diverges silently: the limit docs/guide/prefix-cache.md states
    model = _fresh(lambda: nn.Sequential(_Scaled(), nn.ReLU(), nn.Linear(8, 3)))
    plain, _ = _train_frozen(_fresh(lambda: nn.Sequential(_Scaled(), nn.ReLU(), nn.Linear(8, 3))), ["0"], edit=_rescale)
    unchecked, _ = _train_frozen(model, ["0"], cache={}, edit=_rescale)  # verify=0, the default
    assert unchecked[:4] == pytest.approx(plain[:4]) and unchecked[4:] != pytest.approx(plain[4:])


def test_the_self_check_passes_a_sound_run_and_counts_its_batches():
    plain, _ = _train_frozen(_fresh(_conv), ["1"])
    cached, cache = _train_frozen(_fresh(_conv), ["1"], cache={"verify": 3})
    assert cached == plain
    assert cache.stats["verified"] == 6  # 3 batches that computed rows, 3 that served them


@pytest.mark.parametrize("verify", [-1, 1.5, True])
def test_a_verify_that_is_not_a_count_is_refused(verify):
    model = _fresh(_conv)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["name"] = "all"
    with pytest.raises(ValueError, match="verify: must be a number of batches"):
        FrozenPrefixCache(model, Freezer(model, opt), ROWS, same_inputs=True, verify=verify)


class _WithEmptyBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("unused", torch.zeros(0, 4))  # an empty 2-D tensor in the prefix

    def forward(self, x):
        return self.linear(x)


def test_a_prefix_holding_an_empty_tensor_is_stamped_and_served():
    make = lambda: nn.Sequential(_WithEmptyBuffer(), nn.ReLU(), nn.Linear(8, 3))  # noqa: E731
    plain, _ = _train_frozen(_fresh(make), ["0"])
    cached, cache = _train_frozen(_fresh(make), ["0"], cache={})
    assert cached == plain and cache.stats["hits"] > 0
