"""Lightning's pre-2.1 FSDPStrategy option ``activation_checkpointing``: accepted with a DeprecationWarning."""

from __future__ import annotations

import pytest
from torch import nn

from torchplug import MisconfigurationError
from torchplug_fsdp import FSDPStrategy


def test_activation_checkpointing_becomes_the_policy_with_a_deprecation_warning():
    with pytest.deprecated_call(
        match=r"activation_checkpointing_policy=\{<class 'torch.nn.modules.linear.Linear'>"
    ):
        strategy = FSDPStrategy(activation_checkpointing=nn.Linear)
    policy = strategy.activation_checkpointing_policy
    assert policy(nn.Linear(2, 2)) and not policy(nn.ReLU())

    with pytest.deprecated_call():
        strategy = FSDPStrategy(activation_checkpointing=[nn.Linear, nn.ReLU])
    assert strategy.activation_checkpointing_policy(nn.ReLU())


def test_both_names_are_refused():
    with pytest.raises(ValueError, match="cannot set both `activation_checkpointing"):
        FSDPStrategy(activation_checkpointing=nn.Linear, activation_checkpointing_policy=lambda *_: True)
    assert issubclass(MisconfigurationError, ValueError)
