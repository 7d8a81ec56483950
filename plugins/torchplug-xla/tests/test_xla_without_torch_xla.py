"""What torchplug-xla does where PyTorch/XLA is absent or broken: runs in the main environment (no torch_xla).

Discovery must not import torch_xla, ``accelerator="auto"`` must never pick XLA there, and choosing it must say how
to install a torch-xla that matches torch.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, TensorDataset

import torchplug
from torchplug import MisconfigurationError, registry
from torchplug.testing import subprocess_env
from torchplug_xla import _data, _runtime

no_torch_xla = pytest.mark.skipif(
    importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed in this environment"
)


def test_entry_points_name_the_accelerator_and_strategies():
    accelerators = {b.name: b for b in registry.discover("accelerator") if b.distribution == "torchplug-xla"}
    assert set(accelerators) == {"tpu"}
    assert accelerators["tpu"].aliases == ("xla",)
    strategies = {
        n for b in registry.discover("strategy") if b.distribution == "torchplug-xla" for n in b.names
    }
    assert strategies == {"xla", "single_xla", "xla_spmd"}
    for backend in registry.discover("strategy"):
        if backend.distribution == "torchplug-xla":
            assert backend.load().__module__.startswith("torchplug_xla.strategies")


def test_loading_every_backend_does_not_import_torch_xla():
    code = textwrap.dedent(
        """
        import sys
        from torchplug import registry
        from torchplug_xla import XLAAccelerator
        for kind in ("accelerator", "strategy"):
            for backend in registry.discover(kind):
                if backend.distribution == "torchplug-xla":
                    backend.load()
        XLAAccelerator.is_available(); XLAAccelerator.device_count(); XLAAccelerator.describe()
        print("torch_xla" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(PJRT_DEVICE="CPU"), capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"


@no_torch_xla
def test_not_available_without_torch_xla_even_when_a_device_is_configured(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    from torchplug_xla import XLAAccelerator

    assert XLAAccelerator.is_available() is False
    assert XLAAccelerator.device_count() == 0


@no_torch_xla
@pytest.mark.parametrize("name", ["tpu", "xla"])
def test_choosing_xla_without_torch_xla_says_how_to_install(monkeypatch, name):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    with pytest.raises(MisconfigurationError) as info:
        torchplug.Trainer(accelerator=name, devices=1, logger=False)
    message = str(info.value)
    assert "accelerator='tpu'" in message  # the canonical name, also when the alias was typed
    assert "not installed" in message
    assert "pip install 'torchplug-xla[tpu]'" in message
    assert "must match exactly" in message


@no_torch_xla
def test_a_torch_xla_built_for_another_torch_is_reported_with_both_versions(tmp_path, monkeypatch):
    """Stand-in: a ``torch_xla`` package that fails to load like a wheel built for another torch does."""
    package = tmp_path / "torch_xla"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError('_XLAC.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN5torch8autograd')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_xla", raising=False)
    with pytest.raises(MisconfigurationError) as info:
        _runtime.import_torch_xla("accelerator='tpu'")
    message = str(info.value)
    assert f"failed to import with torch {torch.__version__}" in message
    assert "undefined symbol" in message
    assert "must match exactly" in message


def test_auto_never_picks_xla_when_no_xla_device_is_configured(monkeypatch):
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    monkeypatch.setattr(_runtime, "PCI_DEVICES", "/nonexistent")
    from torchplug_xla import XLAAccelerator

    assert XLAAccelerator.device_count() == 0
    assert XLAAccelerator.is_available() is False


# ------------------------------------------------------------------------------------------------ device counting
def _fake_pci(root, devices):
    """Stand-in for /sys/bus/pci/devices: one folder per device with its vendor and device id."""
    for i, (vendor, device) in enumerate(devices):
        folder = root / f"0000:00:{i:02x}.0"
        folder.mkdir(parents=True)
        (folder / "vendor").write_text(vendor + "\n")
        (folder / "device").write_text(device + "\n")
    return str(root)


@pytest.mark.parametrize(
    ("pci", "expected"),
    [
        ([("0x1ae0", "0x005e")] * 4 + [("0x8086", "0x1234")], 4),  # v4: one device per chip; an Intel device
        ([("0x1ae0", "0x0027")] * 4, 8),  # v3: two TensorCores per chip
        ([("0x1ae0", "0x9999")], 0),  # a Google device that is not a TPU
    ],
)
def test_tpu_devices_are_counted_from_the_pci_bus(tmp_path, monkeypatch, pci, expected):
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    monkeypatch.delenv("TPU_VISIBLE_CHIPS", raising=False)
    monkeypatch.setattr(_runtime, "PCI_DEVICES", _fake_pci(tmp_path, pci))
    assert _runtime.count_devices() == expected
    assert _runtime.device_type() == ("TPU" if expected else None)


def test_visible_chips_limit_the_tpu_count(tmp_path, monkeypatch):
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    monkeypatch.setattr(_runtime, "PCI_DEVICES", _fake_pci(tmp_path, [("0x1ae0", "0x0027")] * 4))
    monkeypatch.setenv("TPU_VISIBLE_CHIPS", "1,3")
    assert _runtime.count_devices() == 4


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"PJRT_DEVICE": "CPU"}, 1), ({"PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}, 4),
     ({"PJRT_DEVICE": "cpu", "CPU_NUM_DEVICES": "2"}, 2), ({"PJRT_DEVICE": "CUDA", "GPU_NUM_DEVICES": "3"}, 3),
     ({"PJRT_DEVICE": "NEURON", "NEURON_NUM_DEVICES": "2"}, 2)],
)  # fmt: skip
def test_configured_pjrt_devices_are_counted_from_the_environment(monkeypatch, env, expected):
    for name in ("CPU_NUM_DEVICES", "GPU_NUM_DEVICES", "NEURON_NUM_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _runtime.count_devices() == expected


def test_a_malformed_device_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.setenv("CPU_NUM_DEVICES", "two")
    with pytest.raises(MisconfigurationError, match="CPU_NUM_DEVICES='two'"):
        _runtime.count_devices()


@no_torch_xla
@pytest.mark.parametrize(
    ("chip", "index", "visible", "ordinal", "host"), [("0x005e", 2, "2", 0, 4), ("0x0027", 5, "2", 1, 8)]
)
def test_one_device_run_opens_only_its_tpu_chip(tmp_path, monkeypatch, chip, index, visible, ordinal, host):
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    for name in (
        "TPU_VISIBLE_CHIPS",
        "TPU_CHIPS_PER_PROCESS_BOUNDS",
        "TPU_PROCESS_BOUNDS",
        _runtime.HOST_DEVICES,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_runtime, "PCI_DEVICES", _fake_pci(tmp_path, [("0x1ae0", chip)] * 4))
    monkeypatch.setattr(_runtime, "_pinned", {})
    assert _runtime.pin_one_device(index) == ordinal
    assert os.environ["TPU_VISIBLE_CHIPS"] == visible
    assert os.environ["TPU_PROCESS_BOUNDS"] == os.environ["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
    # asked again in the same process (xmp.spawn, then the accelerator), and the host's count is unchanged
    assert _runtime.pin_one_device(index) == ordinal
    assert _runtime.count_devices() == host
    with pytest.raises(MisconfigurationError, match=f"already runs on TPU device {index} alone"):
        _runtime.pin_one_device(index - 1)


def test_pinning_leaves_cpu_devices_and_user_choices_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.delenv("TPU_VISIBLE_CHIPS", raising=False)
    monkeypatch.setattr(_runtime, "_pinned", {})
    assert _runtime.pin_one_device(3) == 3
    assert _runtime.pin_one_device(1) == 1  # nothing was restricted: any device stays reachable
    assert "TPU_VISIBLE_CHIPS" not in os.environ
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    monkeypatch.setenv("TPU_VISIBLE_CHIPS", "0,1")
    monkeypatch.setattr(_runtime, "PCI_DEVICES", _fake_pci(tmp_path, [("0x1ae0", "0x005e")] * 4))
    assert _runtime.pin_one_device(1) == 1 and os.environ["TPU_VISIBLE_CHIPS"] == "0,1"


def test_a_replica_counts_the_devices_of_its_host(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.setenv("CPU_NUM_DEVICES", "1")
    monkeypatch.setenv(_runtime.HOST_DEVICES, "8")
    assert _runtime.count_devices() == 8


# ------------------------------------------------------------------------------------------------ samplers
def test_each_replica_gets_its_own_equal_share_of_a_shuffled_loader(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=2, shuffle=True, drop_last=True)
    shares = [_data.with_distributed_sampler(loader, 3, rank) for rank in range(3)]
    seen = [[int(i) for (batch,) in share for i in batch] for share in shares]
    assert all(share.sampler.shuffle for share in shares)
    assert all(share.batch_size == 2 and share.drop_last for share in shares)
    assert [len(share) for share in shares] == [2, 2, 2]  # 10 samples padded to 12: 4 per replica, 2 batches
    assert [len(s) for s in seen] == [4, 4, 4]
    padded = [i for s in seen for i in s]
    assert set(padded) == set(range(10)) and len(padded) == 12
    assert seen != [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]  # the unshuffled split
    again = _data.with_distributed_sampler(loader, 3, 0)
    assert [int(i) for (batch,) in again for i in batch] == seen[
        0
    ]  # same seed, same permutation on every replica


def test_an_ordered_loader_stays_ordered_per_replica():
    loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2)
    share = _data.with_distributed_sampler(loader, 2, 1)
    assert not isinstance(share.sampler, RandomSampler) and share.sampler.shuffle is False
    assert [int(i) for (batch,) in share for i in batch] == [1, 3, 5, 7]


def test_a_custom_batch_sampler_is_refused_with_what_to_do():
    class Pairs(Sampler):
        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self):
            return 2

    loader = DataLoader(TensorDataset(torch.arange(4)), batch_sampler=Pairs())
    with pytest.raises(MisconfigurationError, match="use_distributed_sampler=False"):
        _data.with_distributed_sampler(loader, 2, 0)


def test_loaders_that_already_shard_are_kept():
    dataset = TensorDataset(torch.arange(8))
    loader = DataLoader(dataset, sampler=torch.utils.data.DistributedSampler(dataset, 2, 0))
    assert _data.with_distributed_sampler(loader, 2, 0) is loader
    assert _data.with_distributed_sampler([1, 2], 2, 0) == [1, 2]
    custom = DataLoader(dataset, sampler=torch.utils.data.SubsetRandomSampler(range(4)))
    assert _data.with_distributed_sampler(custom, 2, 0) is custom  # the user's sampler decides


def test_a_stage_that_cannot_be_sent_to_the_replicas_is_refused_with_what_to_do(tmp_path):
    from torchplug_xla import _launch

    with pytest.raises(MisconfigurationError, match="strategy='xla' starts one process per device.*lambdas"):
        _launch._Replica(lambda: None, str(tmp_path), host_devices=8)
