"""``by_rows`` on a tied output layer (sharing the embedding's weight) refuses before it changes anything."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from layerwise import by_rows


class _TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight  # tied: one parameter, two modules

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(tokens))))


@pytest.mark.parametrize("module", ["out", "emb"])
def test_by_rows_on_a_tied_weight_refuses_naming_both_modules_and_leaves_the_model_as_it_was(module):
    model = _TiedLM()
    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters(remove_duplicate=False)}
    other = "emb" if module == "out" else "out"
    with pytest.raises(ValueError, match=rf"module: '{module}' shares its parameter with module '{other}'.*untie"):
        by_rows(model, module, {"a": [0, 1]})
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    after = dict(model.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys()
    for name, (param, value) in before.items():
        assert after[name] is param and torch.equal(param, value), name
    assert model.out.weight is model.emb.weight  # still tied


def test_by_rows_splits_a_layer_the_user_untied():
    model = _TiedLM()
    model.out.weight = nn.Parameter(model.emb.weight.detach().clone())  # untied by the user: allowed
    part = by_rows(model, "out", {"first": [0, 1, 2]})
    assert part.names == ("body", "first", "out.rest")
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 10)
