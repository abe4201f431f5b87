import warnings

import pytest
import torch
from torch import nn

from layerwise import groups
from layerwise.tasks.models import ResNetCNN, TransformerClassifier


class Reversed(nn.Module):
    """Registers `late` before `early`, but calls `early` first."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(8, 2)
        self.early = nn.Linear(4, 8)

    def forward(self, x):
        return self.late(torch.relu(self.early(x)))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mid(self.embed(tokens))))


class Lora(nn.Module):
    def __init__(self):
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(4, 2, bias=False)
        self.lora_B = nn.Linear(2, 4, bias=False)
        self.classifier = nn.Linear(4, 2)

    def forward(self, x):
        return self.classifier(self.base(x) + self.lora_B(self.lora_A(x)))


def trainable(model):
    return {id(p) for p in model.parameters() if p.requires_grad}


def covered(part):
    ids = [id(p) for g in part for p in g.params]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    return set(ids)


def test_execution_order_beats_registration_order():
    model = Reversed()
    part = groups.by_layer(model, sample_input=torch.zeros(1, 4))
    assert part.names == ("early", "late")
    assert part.order == "execution"
    assert [g.depth for g in part] == [0, 1]
    with pytest.warns(UserWarning, match="registration order"):
        fallback = groups.by_layer(model)
    assert fallback.names == ("late", "early")
    assert fallback.order == "registration"


def test_tracing_leaves_model_untouched():
    model = ResNetCNN()
    model.train()
    stats = model.stem[1].running_mean.clone()
    groups.by_layer(model, sample_input=torch.randn(4, 1, 28, 28))
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.stem[1].running_mean, stats)


def test_resnet_layers_cover_every_parameter_in_data_flow_order():
    model = ResNetCNN()
    part = groups.by_layer(model, sample_input=torch.zeros(2, 1, 28, 28))
    assert covered(part) == trainable(model)
    names = part.names
    assert names[0] == "stem.0" and names[-1] == "fc"
    # the shortcut runs after the block's second conv: execution order, not registration
    assert names.index("layer2.shortcut.0") > names.index("layer2.bn2")
    blocks = groups.by_block(model, depth=1, sample_input=torch.zeros(2, 1, 28, 28))
    assert blocks.names == ("stem", "layer1", "layer2", "layer3", "fc")
    assert covered(blocks) == trainable(model)


def test_transformer_encoder_partition():
    model = TransformerClassifier()
    sample = torch.zeros(2, 16, dtype=torch.long)
    part = groups.by_layer(model, sample_input=sample)
    assert covered(part) == trainable(model)
    assert part.names[:2] == ("embed", "root")  # pos embedding lives on the root module
    assert part.names[-2:] == ("norm", "head")
    blocks = groups.by_block(model, depth=3, sample_input=sample)
    assert "encoder.layers.0" in blocks.names and "encoder.layers.1" in blocks.names
    assert blocks.names.index("encoder.layers.0") < blocks.names.index("encoder.layers.1")
    buckets = groups.by_depth_buckets(model, 3, sample_input=sample)
    assert buckets.names == ("bucket0", "bucket1", "bucket2")
    assert covered(buckets) == trainable(model)
    flat = [n for g in buckets for n in g.param_names]
    assert flat == [n for g in part for n in g.param_names]  # contiguous, order kept


def test_tied_weights_appear_once():
    model = Tied()
    part = groups.by_layer(model, sample_input=torch.zeros(1, 3, dtype=torch.long))
    assert covered(part) == trainable(model)
    assert part.names == ("embed", "mid")  # the tied output weight belongs to embed
    opt = torch.optim.SGD(part.param_groups(lr=0.1), lr=0.1)  # torch rejects duplicates
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable(model))


def test_patterns_first_match_wins_and_unmatched_is_an_error():
    model = ResNetCNN()
    part = groups.by_patterns(model, {r"^layer\d\.": "blocks", r"conv|\.0\.": "convs", r"fc": "head"}, rest="other")
    assert part.names == ("blocks", "convs", "head", "other")
    assert part.group_of("layer1.conv1.weight") == "blocks"
    assert part.group_of("stem.0.weight") == "convs"
    assert covered(part) == trainable(model)
    with pytest.raises(ValueError, match=r"stem\.1\.weight"):
        groups.by_patterns(model, {"layer*": "blocks", "fc.*": "head"}, syntax="glob")
    with pytest.raises(ValueError, match="syntax"):
        groups.by_patterns(model, {"x": "y"}, syntax="sql")


def test_kind_head_lora_and_explicit():
    model = ResNetCNN()
    kinds = groups.by_kind(model)
    assert kinds.names == ("weight", "bias", "norm")
    assert kinds["bias"].param_names == ("fc.bias",)
    assert all(".bn" in n or "shortcut.1" in n or n.startswith("stem.1") for n in kinds["norm"].param_names)
    head = groups.by_head(model, sample_input=torch.zeros(1, 1, 28, 28))
    assert head.names == ("body", "head") and head["head"].param_names == ("fc.weight", "fc.bias")
    assert groups.by_head(model, head=["layer3", "fc"])["head"].numel > head["head"].numel

    lora = Lora()
    part = groups.by_lora(lora)
    assert part.names == ("lora_A", "lora_B", "other")
    assert part.excluded == ("base.weight", "base.bias")
    assert part["other"].param_names == ("classifier.weight", "classifier.bias")

    exp = groups.explicit(
        model, {"features": [model.stem, model.layer1], "top": ["fc.weight", model.fc.bias]}, rest="middle"
    )
    assert exp.names == ("features", "top", "middle")
    assert covered(exp) == trainable(model)
    with pytest.raises(ValueError, match="in no group"):
        groups.explicit(model, {"top": [model.fc]})


def test_param_groups_work_with_any_optimizer_and_fold_multipliers():
    model = ResNetCNN()
    part = groups.by_block(model, sample_input=torch.zeros(1, 1, 28, 28))
    dicts = part.param_groups(lr=0.1, lr_mult={"fc": 10.0}, weight_decay=5e-4, no_decay=("bias", "norm"))
    for opt_cls in (torch.optim.SGD, torch.optim.AdamW, torch.optim.RMSprop):
        opt = opt_cls(dicts)
        fc = [g for g in opt.param_groups if g["name"] == "fc"]
        assert [g["lr"] for g in fc] == pytest.approx([1.0, 1.0])
        assert sorted(g["weight_decay"] for g in fc) == [0.0, 5e-4]  # bias split off, no decay
    norm_group = [d for d in dicts if d["name"] == "stem" and d["weight_decay"] == 0.0]
    assert len(norm_group[0]["params"]) == 2  # BN weight and bias
    assert {d["depth"] for d in dicts} == set(range(len(part)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": 0.1, "lr_mult": [1.0, 2.0]}, "lr_mult"),
        ({"lr": 0.1, "lr_mult": {"nope": 2.0}}, "lr_mult"),
        ({"lr": 0.1, "lr_mult": {"fc": float("inf")}}, "lr_mult"),
        ({"lr_mult": {"fc": 2.0}}, "lr_mult needs lr"),
        ({"lr": 0.1, "weight_decay": 1e-4, "no_decay": ("biases",)}, "no_decay"),
        ({"lr": 0.1, "no_decay": ("bias",)}, "no_decay"),
    ],
)
def test_param_groups_bad_input(kwargs, message):
    part = groups.by_block(ResNetCNN(), sample_input=torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match=message):
        part.param_groups(**kwargs)


def test_model_without_trainable_parameters_is_an_error():
    frozen = nn.Linear(2, 2).requires_grad_(False)
    for build in (groups.by_layer, groups.by_kind, groups.by_lora):
        with pytest.raises(ValueError, match="no trainable parameters"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build(frozen)
    with pytest.raises(ValueError, match="no trainable parameters"):
        groups.by_layer(nn.ReLU(), sample_input=torch.zeros(1))


def test_bad_builder_arguments():
    model = ResNetCNN()
    with pytest.raises(ValueError, match="depth"):
        groups.by_block(model, depth=0)
    with pytest.raises(ValueError, match="depth"):
        groups.by_block(model, depth=1.5)
    with pytest.raises(ValueError, match="n: must be an int between"):
        groups.by_depth_buckets(model, 500, sample_input=torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="head"):
        groups.by_head(model, head="classifier")
    with pytest.raises(ValueError, match="invalid regex"):
        groups.by_patterns(model, {"(": "x"})
