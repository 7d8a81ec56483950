"""Options and the errors a person gets: at construction where the arguments say it all, at setup where the
model is needed. Runs that need a model use one process (a process group of one) inside the test process."""

from __future__ import annotations

import pytest
import torch
from fsdp_jobs import Block, Net
from torch import nn

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET, regression_loader
from torchplug_fsdp import FSDPStrategy

pytestmark = pytest.mark.timeout(120)

CPU = {"accelerator": "cpu", "strategy": "fsdp", **QUIET}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"find_unused_parameters": True}, r"find_unused_parameters=True is an option of strategy='ddp'"),
        ({"sync_batchnorm": True}, r"sync_batchnorm=True is an option of strategy='ddp'.*SyncBatchNorm"),
        ({"bucket_cap_mb": 25}, r"bucket_cap_mb=25 is an option of strategy='ddp'"),
        ({"start_method": "spawn"}, r"start_method='spawn'.*sharded parameters"),
        ({"cpu_offload": True}, r"cpu_offload=True.*computes on the CPU already"),
        ({"sharding_strategy": "SHARD_GRAD_OP"}, r"use 'FULL_SHARD' or 'HYBRID_SHARD' \(FSDP1's SHARD_GRAD_OP is "
                                                 r"reshard_after_forward=False\)"),
        ({"sharding_strategy": "NO_SHARD"}, r"strategy='ddp'"),
        ({"device_mesh": (1, 2)}, r"device_mesh=\(1, 2\) shapes the 2-D mesh of sharding_strategy='HYBRID_SHARD'"),
        ({"sharding_strategy": "HYBRID_SHARD", "device_mesh": (2, 2)}, r"holds 4 processes, and the job has 2"),
        ({"sharding_strategy": "HYBRID_SHARD", "device_mesh": (2, 0)}, r"two ints >= 1"),
        ({"state_dict_type": "local"}, r"state_dict_type='local': use 'sharded'.*or 'full'"),
        ({"reshard_after_forward": 0}, r"reshard_after_forward=0: use True, False, or an int k >= 1"),
        ({"auto_wrap_policy": "Block"}, r"auto_wrap_policy='Block'.*set of nn.Module classes"),
        ({"auto_wrap_policy": {Block, "x"}}, r"is not an nn.Module class"),
        ({"activation_checkpointing_policy": 3}, r"activation_checkpointing_policy=3"),
    ],
)
def test_wrong_options_are_refused_when_the_trainer_is_made(options, message):
    with pytest.raises(MisconfigurationError, match=message):
        Trainer(devices=2, **CPU, **options)


def test_options_reach_the_strategy_as_trainer_keywords():
    trainer = Trainer(devices=2, auto_wrap_policy={Block}, reshard_after_forward=False, state_dict_type="full",
                      sharding_strategy="HYBRID_SHARD", device_mesh=(2, 1), reshard_between_micro_batches=False, **CPU)  # fmt: skip
    strategy = trainer.strategy
    assert isinstance(strategy, FSDPStrategy) and trainer.strategy_name == "fsdp"
    assert strategy.auto_wrap_policy(Block(2, 0.0)) and not strategy.auto_wrap_policy(nn.Linear(2, 2))
    assert (strategy.reshard_after_forward, strategy.state_dict_type, strategy.device_mesh) == (False, "full", (2, 1))
    assert strategy.reshard_between_micro_batches is False
    assert strategy.mesh_shape(trainer) == (2, 1)
    assert FSDPStrategy(auto_wrap_policy=lambda m: isinstance(m, Block)).auto_wrap_policy(Block(2, 0.0))


def fit_one_process(model, **options):
    trainer = Trainer(devices=1, max_steps=2, **{**CPU, **options})
    trainer.fit(model, regression_loader())
    return trainer


def test_one_process_trains_validates_tests_and_predicts_the_same_sharded_model(in_process):
    from torch.distributed.tensor import DTensor

    model = Net()
    trainer = fit_one_process(model, auto_wrap_policy={Block})
    assert trainer.global_step == 2
    assert all(isinstance(p, DTensor) for p in model.parameters())
    # later stages of this process reuse the sharding (fully_shard cannot be applied twice)
    assert trainer.validate(model, regression_loader(16)) == [{}]
    predictions = trainer.predict(model, regression_loader(16))
    assert len(predictions) == 2 and predictions[0].shape == (8, 1)
    trainer = Trainer(devices=1, max_steps=4, **{**CPU, "auto_wrap_policy": {Block}})
    trainer.fit(model, regression_loader())
    assert trainer.global_step == 4


def test_a_class_policy_that_matches_nothing_names_the_classes_there_are(in_process):
    with pytest.raises(MisconfigurationError, match=r"auto_wrap_policy=\{TransformerEncoderLayer\} matches no "
                                                    r"submodule of Net; its module classes are Block, Dropout, Linear"):
        fit_one_process(Net(), auto_wrap_policy={nn.TransformerEncoderLayer})


def test_a_unit_without_parameters_is_refused(in_process):
    with pytest.raises(MisconfigurationError, match=r"selects 'blocks.2.drop', 'blocks.1.drop', 'blocks.0.drop', "
                                                    r"which would shard no parameter"):
        fit_one_process(Net(), auto_wrap_policy={Block, nn.Dropout})


def test_a_callable_policy_may_select_modules_without_parameters(in_process):
    fit_one_process(Net(), auto_wrap_policy=lambda module: isinstance(module, (Block, nn.Dropout)))


class EarlyOptimizer(Net):
    """Makes its optimizer in configure_model, before fsdp shards the module: it would train nothing."""

    def configure_model(self):
        self.early = torch.optim.Adam(self.parameters(), lr=0.01)

    def configure_optimizers(self):
        return self.early


def test_an_optimizer_made_before_sharding_is_refused(in_process):
    with pytest.raises(MisconfigurationError, match=r"over 11 of 11 parameters that are not the sharded module's "
                                                    r"\(plain tensors: parameters from before sharding\).*make the "
                                                    r"optimizer there, from self.parameters\(\)"):
        fit_one_process(EarlyOptimizer(), auto_wrap_policy={Block})


class FusedSGD(Net):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, fused=True)


def test_fused_sgd_is_refused_before_it_fails_inside_torch(in_process):
    with pytest.raises(MisconfigurationError, match=r"SGD\(fused=True\).*use SGD\(foreach=True\)"):
        fit_one_process(FusedSGD())


class Tied(Net):
    def __init__(self):
        super().__init__(width=4)
        self.out = nn.Linear(4, 4)
        self.out.weight = self.inp.weight  # shared with the input layer


def test_tied_weights_in_two_units_are_refused_with_the_fix(in_process):
    with pytest.raises(MisconfigurationError, match=r"tied \(shared\) as .inp.weight. in unit .inp., .out.weight. in unit .out., into two different shard units"):
        fit_one_process(Tied(), auto_wrap_policy={nn.Linear})
