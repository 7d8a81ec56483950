"""Splitting batches and joining outputs across replicas, and reducing the per-replica values.

On the GPU these functions get DataParallel's scatter and gather; here they get ``torch.chunk``, ``torch.cat``
and ``torch.stack``, which cut and join the same way on the CPU (stand-ins, since this machine has no GPU).
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from torchplug_dp._collections import join_structure, reduce_paths, split_structure, weighted_mean

Point = namedtuple("Point", ["x", "label"])


@dataclass
class Batch:
    inputs: torch.Tensor
    targets: list[torch.Tensor]
    name: str = "b"
    derived: int = field(init=False, default=0)


def halves(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.chunk(tensor, 2)


def test_split_nested_batches_of_every_kind():
    x = torch.arange(8.0).reshape(4, 2)
    y = torch.arange(4.0)
    batch = {
        "tuple": (x, [y]),
        "point": Point(x, "cat"),
        "dataclass": Batch(x, [y], name="kept"),
        "number": 3,
        "empty": [],
    }
    parts = split_structure(("train", batch, 7), halves, copies=2)
    assert len(parts) == 2
    for i, (stage, part, batch_idx) in enumerate(parts):
        rows = slice(2 * i, 2 * i + 2)
        assert stage == "train" and batch_idx == 7
        assert torch.equal(part["tuple"][0], x[rows]) and torch.equal(part["tuple"][1][0], y[rows])
        assert isinstance(part["tuple"], tuple) and isinstance(part["tuple"][1], list)
        assert isinstance(part["point"], Point) and part["point"].label == "cat"
        assert torch.equal(part["point"].x, x[rows])
        assert isinstance(part["dataclass"], Batch) and part["dataclass"].name == "kept"
        assert torch.equal(part["dataclass"].inputs, x[rows]) and torch.equal(part["dataclass"].targets[0], y[rows])
        assert part["number"] == 3 and part["empty"] == []


def test_uneven_and_too_small_batches():
    sizes = [p.shape[0] for p in split_structure(torch.zeros(5, 3), halves, copies=2)]
    assert sizes == [3, 2]
    assert len(split_structure((torch.zeros(1), "x"), halves, copies=2)) == 1  # one sample: one replica
    assert split_structure({"no": "tensors"}, halves, copies=3) == [{"no": "tensors"}] * 3
    scale = torch.tensor(2.0)  # no batch dimension: every replica gets it
    parts = split_structure((scale, torch.zeros(4, 1)), halves, copies=2)
    assert [p[0] for p in parts] == [scale, scale] and [p[1].shape[0] for p in parts] == [2, 2]


def test_shares_come_from_the_first_tensor_with_a_batch_dimension():
    from torchplug_dp._parallel import _shares

    parts = split_structure(("train", {"scale": torch.tensor(2.0), "x": torch.zeros(5, 3)}, 0), halves, copies=2)
    assert _shares(parts, dim=0) == [3, 2]
    assert _shares([("a", 1), ("a", 1)], dim=0) == [1, 1]


def join(tensors):
    return torch.cat(list(tensors))


def stack(tensors):
    return torch.stack(list(tensors))


def test_join_concatenates_batches_and_stacks_per_replica_values():
    outputs = [
        {"loss": torch.tensor(1.0), "preds": torch.zeros(3, 2), "count": 3, "extra": (torch.tensor(5.0), "tag")},
        {"loss": torch.tensor(4.0), "preds": torch.ones(2, 2), "count": 2, "extra": (torch.tensor(6.0), "tag")},
    ]
    per_replica: set = set()
    joined = join_structure(outputs, join, stack, per_replica)
    assert torch.equal(joined["loss"], torch.tensor([1.0, 4.0]))
    assert joined["preds"].shape == (5, 2)
    assert joined["count"] == [3, 2]
    assert torch.equal(joined["extra"][0], torch.tensor([5.0, 6.0])) and joined["extra"][1] == "tag"
    assert per_replica == {("loss",), ("count",), ("extra", 0)}


def test_join_of_dataclass_and_namedtuple_outputs():
    per_replica: set = set()
    joined = join_structure(
        [Point(torch.tensor(1.0), "a"), Point(torch.tensor(3.0), "a")], join, stack, per_replica
    )
    assert isinstance(joined, Point) and per_replica == {(0,)}
    per_replica = set()
    joined = join_structure([Batch(torch.ones(2, 1), [torch.tensor(2.0)]), Batch(torch.ones(1, 1), [torch.tensor(4.0)])],
                            join, stack, per_replica)  # fmt: skip
    assert isinstance(joined, Batch) and joined.inputs.shape == (3, 1)
    assert per_replica == {("targets", 0)}


def test_join_of_skipped_steps():
    assert join_structure([None, None], join, stack, set()) is None
    with pytest.raises(RuntimeError, match="returned None on some GPUs and a value on others"):
        join_structure([None, torch.tensor(1.0)], join, stack, set())


def test_reduce_is_a_mean_weighted_by_each_replicas_share():
    output = {"loss": torch.tensor([1.0, 4.0]), "preds": torch.zeros(4, 1), "count": [3, 1]}
    reduced = reduce_paths(output, {("loss",), ("count",)}, weights=[3, 1])
    assert reduced["loss"].item() == pytest.approx(1.75)
    assert reduced["count"] == pytest.approx(2.5)
    assert reduced["preds"] is output["preds"]
    assert reduce_paths(output, {("loss",)}, weights=[2, 2])["loss"].item() == pytest.approx(2.5)
    assert weighted_mean(torch.tensor([1, 2]), [1, 1]).dtype == torch.float32  # integers average to a float
    assert reduce_paths(output, set(), weights=[1, 1]) is output


def test_weighted_mean_of_per_replica_losses_is_the_whole_batch_loss_and_its_gradient():
    """Two replicas with 3 and 2 samples: the weighted mean of their mean losses is the 5-sample loss, and so
    is its gradient; a plain mean would overweight the smaller replica."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 1)
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    whole = nn.functional.mse_loss(layer(x), y)
    (whole_grad,) = torch.autograd.grad(whole, layer.weight)
    parts = split_structure((x, y), halves, copies=2)
    losses = torch.stack([nn.functional.mse_loss(layer(px), py) for px, py in parts])
    combined = reduce_paths(losses, {()}, weights=[3, 2])
    (combined_grad,) = torch.autograd.grad(combined, layer.weight)
    assert combined.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(combined_grad, whole_grad, atol=1e-6)
    assert abs(losses.mean().item() - whole.item()) > 1e-4  # the plain mean is not the batch loss here
