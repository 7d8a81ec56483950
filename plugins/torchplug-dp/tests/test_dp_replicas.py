"""What a replica sees (``self.device``, ``self.log``, ``self.trainer``) and how replicas' logs are merged.

These run on the CPU with a real Trainer and real threads. The replicas are made with the same shallow copy
that ``torch.nn.parallel.replicate`` makes of every module (``_replicate_for_data_parallel``), without the
parameter broadcast, which needs GPUs; the replica devices are ``torch.device`` values only.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError
from torchplug._loop import Loop
from torchplug._results import Results
from torchplug.testing import QUIET, BoringModel
from torchplug_dp._parallel import ReplicaResults, ReplicaTrainer, _attach, merge_logs


@pytest.fixture
def trainer(tmp_path: Any) -> torchplug.Trainer:
    trainer = torchplug.Trainer(accelerator="cpu", devices=1, **{**QUIET, "default_root_dir": str(tmp_path)})
    trainer.root_device = torch.device("cpu")
    loop = trainer._loop = Loop(trainer, "fit", BoringModel(), None)
    loop.current_hook = "training_step"  # as while the loop runs a training step: self.log logs per step
    trainer._results = Results(trainer, training=True)
    return trainer


def replica_of(module: torch.nn.Module, trainer: Any, index: int) -> tuple[Any, ReplicaResults]:
    replica = module._replicate_for_data_parallel()
    buffer = ReplicaResults()
    _attach(replica, ReplicaTrainer(trainer, torch.device("cuda", index), buffer))
    return replica, buffer


def test_a_replica_sees_its_own_device_and_logs_into_its_own_buffer(trainer):
    model = BoringModel()
    model.trainer = trainer
    replica, buffer = replica_of(model, trainer, 1)
    assert replica.device == torch.device("cuda", 1)
    assert model.device == torch.device("cpu")  # the original module keeps the real trainer
    replica.log("loss", torch.tensor(2.0), prog_bar=True)
    assert [(name, float(value), options["prog_bar"]) for name, value, options in buffer.calls] == [("loss", 2.0, True)]
    assert trainer._results.metrics == {} and "loss" not in trainer.callback_metrics


def test_everything_else_reads_and_writes_the_real_trainer(trainer):
    model = BoringModel()
    model.trainer = trainer
    replica, _ = replica_of(model, trainer, 0)
    trainer.global_step = 12
    assert replica.global_step == 12 and replica.trainer.max_epochs == trainer.max_epochs
    replica.trainer.should_stop = True
    assert trainer.should_stop is True
    assert replica.trainer.lightning_module is trainer.lightning_module


def test_a_view_can_be_copied(trainer):
    import copy

    view = ReplicaTrainer(trainer, torch.device("cuda", 1), ReplicaResults())
    assert copy.copy(view).root_device == torch.device("cuda", 1)


def test_no_logging_outside_a_loop(trainer):
    model = BoringModel()
    model.trainer = trainer
    replica, buffer = replica_of(model, trainer, 0)
    trainer._results = None
    with pytest.raises(MisconfigurationError, match="no stage of the Trainer is running"):
        replica.log("loss", torch.tensor(1.0))
    assert buffer.calls == []


def test_nested_modules_that_know_the_trainer_are_pointed_at_the_view(trainer):
    outer, inner = BoringModel(), BoringModel()
    outer.inner = inner
    outer.trainer, inner.trainer = trainer, trainer
    replica = outer._replicate_for_data_parallel()
    replica.inner = inner._replicate_for_data_parallel()
    _attach(replica, ReplicaTrainer(trainer, torch.device("cuda", 3), ReplicaResults()))
    assert replica.device == replica.inner.device == torch.device("cuda", 3)
    assert inner.device == torch.device("cpu")


def logged(trainer, name):
    return float(trainer.callback_metrics[name])


def buffers_with(*values: Any, name: str = "loss", **options: Any) -> list[ReplicaResults]:
    buffers = []
    for value in values:
        buffer = ReplicaResults()
        buffer.log(name, value, **{**DEFAULT_OPTIONS, **options})
        buffers.append(buffer)
    return buffers


# What self.log in training_step hands on (on_step/on_epoch resolved from the hook, as the replicas record them).
DEFAULT_OPTIONS = dict(prog_bar=False, logger=True, on_step=True, on_epoch=False, reduce_fx="mean", sync_dist=False,
                       batch_size=None, add_dataloader_idx=True)  # fmt: skip


def test_merged_mean_is_weighted_by_each_replicas_share(trainer):
    merge_logs(trainer, buffers_with(torch.tensor(1.0), torch.tensor(4.0)), [3, 1], torch.device("cpu"))
    assert logged(trainer, "loss") == pytest.approx(1.75)


@pytest.mark.parametrize(("reduce_fx", "expected"), [("sum", 5.0), ("max", 4.0), ("min", 1.0), (torch.max, 4.0)])
def test_merged_with_the_metrics_reduce_fx(trainer, reduce_fx, expected):
    buffers = buffers_with(torch.tensor(1.0), torch.tensor(4.0), reduce_fx=reduce_fx)
    merge_logs(trainer, buffers, [3, 1], torch.device("cpu"))
    assert logged(trainer, "loss") == pytest.approx(expected)


def test_given_batch_sizes_weigh_instead_and_add_up(trainer):
    buffers = [ReplicaResults(), ReplicaResults()]
    buffers[0].log("acc", torch.tensor(0.5), **{**DEFAULT_OPTIONS, "on_step": False, "on_epoch": True, "batch_size": 1})
    buffers[1].log("acc", torch.tensor(1.0), **{**DEFAULT_OPTIONS, "on_step": False, "on_epoch": True, "batch_size": 3})
    merge_logs(trainer, buffers, [2, 2], torch.device("cpu"))
    metric = trainer._results.metrics["acc"]
    assert [float(v) for v in metric.values] == [pytest.approx(0.875)] and metric.weights == [4]


def test_numbers_and_repeated_names(trainer):
    buffers = [ReplicaResults(), ReplicaResults()]
    for buffer, first, second in zip(buffers, (1.0, 3.0), (10.0, 30.0), strict=True):
        options = {**DEFAULT_OPTIONS, "on_step": False, "on_epoch": True}
        buffer.log("value", first, **options)
        buffer.log("value", second, **options)  # logged twice in one step: two entries, as on one device
    merge_logs(trainer, buffers, [1, 1], torch.device("cpu"))
    assert [float(v) for v in trainer._results.metrics["value"].values] == [2.0, 20.0]


@pytest.mark.parametrize(
    ("value", "options", "match"),
    [
        (torch.ones(3), {}, "the tensor must have a single element"),
        (torch.tensor(1.0), {"reduce_fx": "median"}, r"reduce_fx=\{min,max,mean,sum\}"),
    ],
)
def test_what_the_core_refuses_is_passed_on_for_it_to_explain(trainer, value, options, match):
    with pytest.raises(ValueError, match=match):
        merge_logs(trainer, buffers_with(value, value, **options), [1, 1], torch.device("cpu"))


def test_replicas_logging_from_threads_at_once(trainer):
    """Eight replicas log 200 values each from their own threads at the same time; every value lands in its
    replica's buffer, and the merge in the calling thread gives one value per name and call."""
    model = BoringModel()
    model.trainer = trainer
    replicas = [replica_of(model, trainer, i) for i in range(8)]
    start = threading.Barrier(len(replicas))

    def work(replica: Any, index: int) -> None:
        start.wait()
        for step in range(200):
            replica.log(f"m{step % 4}", torch.tensor(float(index)), on_step=False, on_epoch=True)

    threads = [threading.Thread(target=work, args=(r, i)) for i, (r, _) in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    buffers = [b for _, b in replicas]
    assert all(len(b.calls) == 200 and {float(v) for _, v, _ in b.calls} == {float(i)} for i, b in enumerate(buffers))
    merge_logs(trainer, buffers, [1] * 8, torch.device("cpu"))
    assert len(trainer._results.metrics["m0"].values) == 50
    assert all(float(v) == pytest.approx(3.5) for v in trainer._results.metrics["m0"].values)
