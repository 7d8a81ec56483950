"""find_shared_parameters / set_shared_parameters: tied weights found by name and tied again."""

import copy

import pytest
import torch
from torch import nn

from torchplug.utilities import find_shared_parameters, set_shared_parameters


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 3, bias=False)
        self.hidden = nn.Linear(3, 4, bias=False)
        self.out = nn.Linear(4, 3, bias=False)
        self.out.weight = self.embed.weight
        self.again = nn.Sequential(self.hidden)  # a module reached under two names


def test_find_shared_parameters_names_each_group():
    assert find_shared_parameters(Tied()) == [
        ["embed.weight", "out.weight"],
        ["hidden.weight", "again.0.weight"],
    ]
    assert find_shared_parameters(nn.Linear(2, 2)) == []


def test_set_shared_parameters_ties_again_what_was_untied():
    model = Tied()
    groups = find_shared_parameters(model)
    model.out.weight = nn.Parameter(
        torch.randn(3, 4)
    )  # untied, as a copy or a re-initialisation would leave it
    assert not torch.equal(model.out.weight, model.embed.weight)
    assert set_shared_parameters(model, groups) is model
    assert model.out.weight is model.embed.weight and find_shared_parameters(model) == groups
    assert find_shared_parameters(copy.deepcopy(model)) == groups


def test_set_shared_parameters_names_an_unknown_submodule():
    with pytest.raises(AttributeError, match="has no submodule 'nothing'"):
        set_shared_parameters(Tied(), [["embed.weight", "nothing.weight"]])
