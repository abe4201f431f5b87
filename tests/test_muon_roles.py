"""muon_split finds the embeddings and the head by what they are, not by registration order: tied heads
registered before or after their embedding, untied heads, Hugging Face LM heads, frozen and shared
parameters, norms; and ReshapedMuon steps a channels_last conv, conv1d and conv3d as the same matrix."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
from torch import nn

import layerwise
from layerwise import ReshapedMuon, muon_split
from layerwise.muon import MUON_DEFAULTS, split_groups

TOKENS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


class TinyLM(nn.Module):
    """Embedding -> two hidden Linears -> a Linear head, tied to the embedding unless ``tied=False``; the head
    registered before the embedding (``head_first``) or after it."""

    def __init__(self, *, head_first: bool, tied: bool = True, head_bias: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        if head_first:
            self.head = nn.Linear(8, 10, bias=head_bias)
            self.emb = nn.Embedding(10, 8)
        else:
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=head_bias)
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.l2(torch.relu(self.l1(self.emb(x))))))


class FunctionalTiedLM(nn.Module):
    """A tied head with no module of its own: the logits are ``h @ emb.weight.T``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8)
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.l2(torch.relu(self.l1(self.emb(x))))) @ self.emb.weight.T


def parts(opt: layerwise.PerGroupOptimizer, model: nn.Module) -> dict[str, list[str]]:
    """Part -> the names of its parameters, one entry per param-group occurrence (so a duplicate shows)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        part: sorted(names[id(p)] for g in o.param_groups for p in g["params"])
        for part, o in zip(opt.part_names, opt.optimizers)
    }


def assert_each_trainable_once(opt: layerwise.PerGroupOptimizer, model: nn.Module) -> None:
    counts = Counter(id(p) for o in opt.optimizers for g in o.param_groups for p in g["params"])
    assert all(c == 1 for c in counts.values()), "a parameter is in two groups"
    assert set(counts) == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("head_first", [True, False], ids=["head-registered-first", "embedding-registered-first"])
@pytest.mark.parametrize("given", ["model", "partition+model"])
def test_a_tied_head_is_found_whatever_the_registration_order(head_first, given):
    model = TinyLM(head_first=head_first)
    if given == "model":
        opt = muon_split(model, sample_input=TOKENS)
    else:
        opt = muon_split(layerwise.by_layer(model, sample_input=TOKENS), model=model, sample_input=TOKENS)
    tied = "head.weight" if head_first else "emb.weight"  # named_parameters names the tie by its first registrant
    assert parts(opt, model) == {
        "muon": ["l1.weight", "l2.weight"],
        "adamw": sorted([tied, "l1.bias", "l2.bias"]),
    }
    assert_each_trainable_once(opt, model)


@pytest.mark.parametrize("head_first", [True, False])
def test_an_untied_head_and_the_embedding_go_to_adamw(head_first):
    model = TinyLM(head_first=head_first, tied=False, head_bias=True)
    opt = muon_split(model, sample_input=TOKENS)
    assert parts(opt, model) == {
        "muon": ["l1.weight", "l2.weight"],
        "adamw": ["emb.weight", "head.bias", "head.weight", "l1.bias", "l2.bias"],
    }
    assert_each_trainable_once(opt, model)


def test_a_tied_head_applied_as_a_matmul_is_the_embedding():
    model = FunctionalTiedLM()
    opt = muon_split(model, sample_input=TOKENS)
    assert parts(opt, model) == {"muon": ["l1.weight", "l2.weight"], "adamw": ["emb.weight", "l1.bias", "l2.bias"]}


def test_a_partition_alone_with_a_tied_matrix_is_refused_and_head_or_model_settles_it():
    model = TinyLM(head_first=True)
    part = layerwise.by_layer(model, sample_input=TOKENS)
    with pytest.raises(ValueError, match=r"tied weight matrices \['head.weight'\].*pass model= and sample_input="):
        muon_split(part)
    with pytest.raises(ValueError, match="tied weight matrices"):
        split_groups(part, "reshape")
    assert parts(muon_split(part, head="head"), model)["muon"] == ["l1.weight", "l2.weight"]
    assert parts(muon_split(part, head=[model.head]), model)["muon"] == ["l1.weight", "l2.weight"]


def test_head_names_a_module_a_parameter_or_a_group_and_an_unknown_name_is_refused():
    model = TinyLM(head_first=False, tied=False, head_bias=True)
    part = layerwise.by_layer(model, sample_input=TOKENS)
    for head in ("head", "head.weight", model.head, model.head.weight, ["head"]):
        assert parts(muon_split(part, head=head), model)["muon"] == ["l1.weight", "l2.weight"], head
        assert parts(muon_split(part, model=model, head=head), model)["muon"] == ["l1.weight", "l2.weight"], head
    everything = parts(muon_split(part, head=()), model)  # no head: the output projection too on Muon
    assert everything["muon"] == ["head.weight", "l1.weight", "l2.weight"]
    with pytest.raises(ValueError, match="head: 'decoder' names no"):
        muon_split(part, head="decoder")
    with pytest.raises(TypeError, match="head: expected a module"):
        muon_split(part, head=[3])  # type: ignore[list-item]


def test_a_model_without_a_way_to_find_its_head_is_refused():
    model = TinyLM(head_first=True, tied=False)
    with pytest.raises(ValueError, match="sample_input: needed to find the model's head"):
        muon_split(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # by_layer: registration order without a sample input
        opt = muon_split(model, head="head")
    assert parts(opt, model)["muon"] == ["l1.weight", "l2.weight"]
    with pytest.raises(ValueError, match="sample_input: with a partition it needs model="):
        muon_split(layerwise.by_layer(model, sample_input=TOKENS), sample_input=TOKENS)
    with pytest.raises(ValueError, match="model: the partition's parameters"):
        muon_split(layerwise.by_layer(model, sample_input=TOKENS), model=TinyLM(head_first=True), sample_input=TOKENS)


@pytest.mark.parametrize("tied", [True, False])
def test_a_model_of_embedding_and_head_only_is_refused(tied):
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10)
            if tied:
                self.head.weight = self.emb.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(x))

    with pytest.raises(ValueError, match="no hidden weight matrix for Muon"):
        muon_split(Bag(), sample_input=TOKENS)


def test_a_frozen_head_is_still_the_head_and_frozen_parameters_are_left_out():
    model = TinyLM(head_first=True, tied=False, head_bias=True)
    model.head.requires_grad_(False)  # fine-tuning the body under a frozen head: l2 is not taken for the head
    model.l1.bias.requires_grad_(False)
    opt = muon_split(model, sample_input=TOKENS)
    assert parts(opt, model) == {"muon": ["l1.weight", "l2.weight"], "adamw": ["emb.weight", "l2.bias"]}
    assert_each_trainable_once(opt, model)


def test_a_linear_registered_twice_and_called_twice_is_one_hidden_matrix():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.a = nn.Linear(8, 8)
            self.b = self.a  # the same module under two names
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.b(torch.relu(self.a(self.emb(x)))).mean(1))

    model = Shared()
    opt = muon_split(model, sample_input=TOKENS)
    assert parts(opt, model) == {"muon": ["a.weight"], "adamw": ["a.bias", "emb.weight", "head.bias", "head.weight"]}
    assert_each_trainable_once(opt, model)


def test_two_parameters_over_one_memory_are_refused():
    model = TinyLM(head_first=False, tied=False)
    model.head.weight = nn.Parameter(model.emb.weight.data)  # shares the storage, but two Parameter objects
    with pytest.raises(ValueError, match="two Parameter objects over the same memory"):
        muon_split(model, sample_input=TOKENS)


def test_norm_gains_of_any_shape_never_go_to_muon():
    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mid = nn.Linear(12, 12)
            self.norm = nn.LayerNorm((3, 4))  # a 2-D gain
            self.rms = nn.RMSNorm(12)
            self.head = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.mid(x).view(-1, 3, 4)).flatten(1)
            return self.head(self.rms(h))

    model = Normed()
    for opt in (
        muon_split(model, sample_input=torch.zeros(2, 12)),
        muon_split(layerwise.by_layer(model, sample_input=torch.zeros(2, 12))),
    ):
        assert parts(opt, model)["muon"] == ["mid.weight"]


def hf_models():
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=8,
    )  # fmt: skip
    gpt2 = transformers.GPT2Config(
        vocab_size=20, n_embd=16, n_layer=1, n_head=2, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return [
        (transformers.BertForMaskedLM(bert), "bert.embeddings.word_embeddings.weight"),
        (transformers.GPT2LMHeadModel(gpt2), "transformer.wte.weight"),
    ]


def test_a_hugging_face_lm_head_tied_to_the_embedding_is_adamw_once():
    for model, tied in hf_models():
        head = model.get_output_embeddings()
        assert head.weight is model.get_input_embeddings().weight  # tied by the config
        opt = muon_split(model, sample_input={"input_ids": TOKENS.remainder(20)})
        split = parts(opt, model)
        names = dict(model.named_parameters())
        matrices = {n for n, p in names.items() if p.ndim >= 2}
        embeddings = {n for n in matrices if "embeddings" in n or n.startswith("transformer.wpe")} | {tied}
        assert split["adamw"].count(tied) == 1 and tied not in split["muon"], type(model).__name__
        assert set(split["muon"]) == matrices - embeddings, type(model).__name__
        assert_each_trainable_once(opt, model)


# ---- ReshapedMuon: other layouts and other convolutions ----------------------------------------------


def conv_net(layout: torch.memory_format) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip
    return model.to(memory_format=layout)


def test_a_channels_last_conv_model_steps_as_the_contiguous_one():
    """The channels_last model trains on its own backward; its contiguous twin gets the same gradients: every
    step of the whole split (Muon and AdamW) leaves the two equal, and the filters channels_last."""
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    last, plain = conv_net(torch.channels_last), conv_net(torch.contiguous_format)
    assert not last[0].weight.is_contiguous()  # the layout the review's repro used
    opts = [muon_split(m, sample_input=x[:1]) for m in (last, plain)]
    assert parts(opts[0], last)["muon"] == parts(opts[1], plain)["muon"] == ["0.weight", "2.weight", "5.weight"]
    for step in range(3):
        for opt in opts:
            opt.zero_grad()
        nn.functional.cross_entropy(last(x.to(memory_format=torch.channels_last)), y).backward()
        for a, b in zip(last.parameters(), plain.parameters()):
            b.grad = a.grad.contiguous()
        for opt in opts:
            opt.step()
        for (name, a), b in zip(last.named_parameters(), plain.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"step {step}: {name}")
    assert last[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_channels_last_conv_model_trains_as_the_contiguous_one_on_its_own_backward():
    """Each on its own forward and backward (conv kernels of each layout): the same weights up to the
    rounding of the gradients in the bfloat16 Newton-Schulz iteration."""
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    runs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = conv_net(layout)
        opt = muon_split(model, sample_input=x[:1].to(memory_format=layout))
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x.to(memory_format=layout)), y).backward()
            opt.step()
        runs.append(model)
    for (name, a), b in zip(runs[0].named_parameters(), runs[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=name)


def test_reshaped_muon_on_a_channels_last_filter_is_the_contiguous_update_exactly():
    torch.manual_seed(1)
    plain = nn.Parameter(torch.randn(6, 3, 3, 3))
    last = nn.Parameter(plain.detach().clone().to(memory_format=torch.channels_last))
    opts = [ReshapedMuon([p], **MUON_DEFAULTS, weight_decay=0.1) for p in (plain, last)]
    for step in range(4):
        grad = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(step))
        plain.grad, last.grad = grad.clone(), grad.clone().to(memory_format=torch.channels_last)
        for opt in opts:
            opt.step()
        assert torch.equal(plain, last), step
        assert last.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(opts[0].state[plain]["momentum_buffer"], opts[1].state[last]["momentum_buffer"])


@pytest.mark.parametrize("shape", [(6, 3, 5), (4, 2, 3, 3, 3)], ids=["conv1d", "conv3d"])
def test_reshaped_muon_on_conv1d_and_conv3d_is_muon_on_the_out_by_rest_matrix(shape):
    torch.manual_seed(2)
    weight = nn.Parameter(torch.randn(shape))
    matrix = nn.Parameter(weight.detach().clone().reshape(shape[0], -1))
    ours, torchs = ReshapedMuon([weight], **MUON_DEFAULTS), torch.optim.Muon([matrix], **MUON_DEFAULTS)
    for step in range(3):
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(step))
        weight.grad, matrix.grad = grad.clone(), grad.reshape(shape[0], -1).clone()
        ours.step()
        torchs.step()
        assert torch.equal(weight.detach().reshape(shape[0], -1), matrix.detach()), step


@pytest.mark.parametrize("conv", [nn.Conv1d, nn.Conv3d])
def test_conv1d_and_conv3d_models_split_their_filters_to_muon(conv):
    size = (2, 2, 6) if conv is nn.Conv1d else (2, 2, 5, 5, 5)
    torch.manual_seed(0)
    model = nn.Sequential(conv(2, 4, 3), nn.ReLU(), conv(4, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(size))  # materialise the lazy head
    opt = muon_split(model, sample_input=torch.zeros(size))
    assert parts(opt, model)["muon"] == ["0.weight", "2.weight"]
    nn.functional.cross_entropy(model(torch.randn(size)), torch.tensor([0, 1])).backward()
    opt.step()
    with pytest.raises(ValueError, match="no hidden weight matrix"):  # conv="adamw": filters to AdamW, none left
        muon_split(model, conv="adamw", sample_input=torch.zeros(size))


def test_a_weight_normed_head_keeps_both_of_its_tensors_off_muon():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    nn.utils.parametrizations.weight_norm(model[4])  # the head's weight = g * v / |v|: g (3, 1) and v (3, 8)
    opt = muon_split(model, sample_input=torch.zeros(2, 4))
    split = parts(opt, model)
    assert split["muon"] == ["0.weight", "2.weight"]
    assert {"4.parametrizations.weight.original0", "4.parametrizations.weight.original1"} <= set(split["adamw"])
    assert_each_trainable_once(opt, model)


class TinyViT(nn.Module):
    """A conv patch embedding, a class token ``[1, 1, D]`` and a position embedding ``[1, N, D]`` as raw
    parameters (as timm's ViT holds them), one hidden Linear and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(1, 8, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 8) * 0.02)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(torch.relu(self.mid(tokens[:, 0])))


@pytest.mark.parametrize("given", ["model", "partition"])
def test_a_position_embedding_and_a_class_token_are_embeddings_not_matrices_for_muon(given):
    model, x = TinyViT(), torch.zeros(2, 1, 8, 8)
    target = model if given == "model" else layerwise.by_layer(model, sample_input=x)
    opt = muon_split(target, sample_input=x if given == "model" else None, conv="reshape")
    split = parts(opt, model)
    assert split["muon"] == ["mid.weight", "patch.weight"]
    assert {"cls_token", "pos_embed", "head.weight"} <= set(split["adamw"])
    assert_each_trainable_once(opt, model)


class RawTables(nn.Module):
    """Raw 2-D parameters of both kinds: a position table added to the tokens, and a hidden matrix multiplied
    (transposed, as ``F.linear`` would) in a module that is not a Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.randn(4, 8) * 0.02)
        self.mix = nn.Parameter(torch.randn(8, 8) / 8**0.5)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.emb(x) + self.pos[: x.shape[1]]
        return self.head(torch.relu(hidden @ self.mix.T))


def test_a_raw_position_table_goes_to_adamw_and_a_raw_matrix_the_forward_multiplies_to_muon():
    model = RawTables()
    split = parts(muon_split(model, sample_input=TOKENS), model)
    assert split["muon"] == ["mix"]  # before: ["mix", "pos"], the position table orthogonalised as a matrix
    assert "pos" in split["adamw"]
    partition = layerwise.by_layer(model, sample_input=TOKENS)
    with pytest.warns(UserWarning, match=r"raw 2-D parameters \['mix', 'pos'\] go to Muon") as caught:
        muon_split(partition, head="head")
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = parts(muon_split(partition, model=model, sample_input=TOKENS), model)
    assert split["muon"] == ["mix"]
