"""Checkpoint files: atomic under SIGKILL, CPU tensors, safe loading, clear errors."""

from __future__ import annotations

import collections
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from torchplug import MisconfigurationError
from torchplug._checkpoint import atomic_save, load_checkpoint, remove_stale_temporaries, temporary_path
from torchplug._errors import CheckpointWriteError
from torchplug.testing import subprocess_env

# The child writes a first checkpoint, says so, then overwrites it with a big one. ``mode`` picks where the kill
# lands: "write" lets torch.save stream 64 MiB to the temporary file; "rename" holds the fully written temporary
# file just before os.replace (by making fsync, the last step before the rename, wait), the narrowest window.
_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    import torchplug._checkpoint as io

    path, mode = sys.argv[1], sys.argv[2]
    io.atomic_save({"state_dict": {"w": torch.full((4,), 1.0)}, "version": 1}, path)
    print("saved-1", flush=True)
    if mode == "rename":
        real_fsync = os.fsync
        def slow_fsync(fd):
            real_fsync(fd)
            print("before-rename", flush=True)
            time.sleep(60)
        io.os.fsync = slow_fsync
    big = torch.full((16 * 1024 * 1024,), 2.0)  # 64 MiB
    for _ in range(1000):
        io.atomic_save({"state_dict": {"w": big}, "version": 2}, path)
        print("saved-2", flush=True)
    """
)


def _run_child_and_kill(tmp_path: Path, mode: str) -> tuple[Path, int]:
    path = tmp_path / "last.ckpt"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "saved-1", child.stderr.read() if child.stderr else ""
        deadline = time.monotonic() + 60
        if mode == "rename":
            assert child.stdout.readline().strip() == "before-rename"
        else:
            # Kill as soon as the temporary file has some bytes in it but (most likely) not all of them.
            while time.monotonic() < deadline:
                temporaries = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.tmp.")]
                if temporaries and temporaries[0].stat().st_size > 0:
                    break
                time.sleep(0.0005)
            else:
                pytest.fail("the child never started writing its second checkpoint")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return path, child.returncode


@pytest.mark.parametrize("mode", ["write", "rename"])
def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path: Path, mode: str) -> None:
    path, returncode = _run_child_and_kill(tmp_path, mode)
    assert returncode == -signal.SIGKILL

    # The destination still holds a complete checkpoint: the first one, unless the second was fully renamed in
    # before the kill landed (possible only in "write" mode, and then it must be complete too).
    checkpoint = load_checkpoint(path)
    if mode == "rename":
        assert checkpoint["version"] == 1
    expected = torch.full_like(checkpoint["state_dict"]["w"], float(checkpoint["version"]))
    assert torch.equal(checkpoint["state_dict"]["w"], expected)

    # Nothing that looks like a checkpoint is left beside it: the killed write's temporary file is hidden.
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["last.ckpt"]
    assert not list(tmp_path.glob("*.ckpt"))[1:]
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if mode == "rename":
        assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.ckpt.tmp.")

    # The next save to the same destination cleans up what the killed process could not.
    atomic_save({"state_dict": {"w": torch.zeros(2)}, "version": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert load_checkpoint(path)["version"] == 3


def test_failed_save_removes_temporary_and_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(3)}}, path)

    def broken_save(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def test_round_trip_keeps_structure_and_moves_to_cpu(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.randn(3, requires_grad=True))
    checkpoint = {
        "state_dict": collections.OrderedDict(w=param, b=torch.arange(4)),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"betas": (0.9, 0.99)}]}],
        "epoch": 2,
        "hyper_parameters": {"lr": 0.1, "name": "x", "layers": [1, 2], "flag": True, "none": None},
        "dtype": torch.float16,
        "shape": torch.Size([2, 3]),
    }
    path = tmp_path / "sub" / "dir" / "x.ckpt"  # parent folders are created
    atomic_save(checkpoint, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded["state_dict"], collections.OrderedDict)
    assert torch.equal(loaded["state_dict"]["w"], param.detach())
    assert not loaded["state_dict"]["w"].requires_grad
    assert loaded["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert loaded["hyper_parameters"] == checkpoint["hyper_parameters"]
    assert loaded["dtype"] is torch.float16 and loaded["shape"] == torch.Size([2, 3])
    # New checkpoints get the usual permissions, not mkstemp's owner-only 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_tensors_on_another_device_are_saved_on_cpu(tmp_path: Path) -> None:
    """No accelerator here: a Tensor subclass records that saving calls ``.cpu()`` on it (the GPU test below is real)."""
    seen: list[torch.device] = []
    original = torch.Tensor.cpu

    class Spy(torch.Tensor):
        def cpu(self, *args: object, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
            seen.append(self.device)
            return original(self.as_subclass(torch.Tensor), *args, **kwargs)

    t = torch.ones(2).as_subclass(Spy)
    atomic_save({"state_dict": {"t": t}}, tmp_path / "c.ckpt")
    assert seen == [torch.device("cpu")]
    assert type(load_checkpoint(tmp_path / "c.ckpt")["state_dict"]["t"]) is torch.Tensor


def test_unsafe_content_is_refused_before_writing(tmp_path: Path) -> None:
    class Config:
        pass

    path = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match=r"checkpoint\['hyper_parameters'\]\['cfg'\] is a .*Config"):
        atomic_save({"state_dict": {}, "hyper_parameters": {"cfg": Config()}}, path)
    assert not any(tmp_path.iterdir())


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(MisconfigurationError, match="nope.ckpt"):
        load_checkpoint(missing)
    with pytest.raises(MisconfigurationError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_pickled_code_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(MisconfigurationError, match="weights_only=True because a checkpoint is data, not code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(MisconfigurationError, match="garbage.ckpt' is not a torchplug checkpoint"):
        load_checkpoint(garbage)

    good = tmp_path / "good.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(1000)}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MisconfigurationError, match="truncated"):
        load_checkpoint(truncated)

    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.ones(2)}, bare)
    with pytest.raises(MisconfigurationError, match=r"no 'state_dict'|'state_dict' key.*\['weight'\]"):
        load_checkpoint(bare)


# ------------------------------------------------------------------------------------------------ write errors
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB filesystem (tmpfs), so that writes fail with ENOSPC as on a full disk."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_names_the_file_and_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    path = small_disk / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(1000)}}, path)
    with pytest.raises(CheckpointWriteError) as error:
        atomic_save({"state_dict": {"w": torch.zeros(200_000)}}, path)  # 800 KB on a 512 KiB disk
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    message = str(error.value)
    assert f"could not write the checkpoint {str(path)!r}: the disk is full (ENOSPC" in message
    assert "were written, 0 bytes were free" in message
    assert "enforce fail" not in message  # torch's own wording is only the chained cause
    # the previous checkpoint is intact, the temporary file is gone, and the space it took is free again
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(1000))
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.ckpt"]
    assert shutil.disk_usage(small_disk).free > 400_000


def test_full_disk_during_fit_stops_with_the_file_and_keeps_earlier_checkpoints(small_disk: Path, tmp_path: Path) -> None:
    from torchplug import Trainer
    from torchplug.callbacks import ModelCheckpoint
    from torchplug.testing import BoringModel, regression_loader

    class Wide(BoringModel):  # about 260 KB per checkpoint: one fits on the disk, two do not
        def __init__(self) -> None:
            super().__init__()
            self.big = torch.nn.Linear(256, 256)

    checkpoint = ModelCheckpoint(dirpath=small_disk, filename="{epoch}")
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, max_epochs=3, callbacks=[checkpoint],
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(CheckpointWriteError, match=re.escape(f"{str(small_disk / 'epoch=1.ckpt')!r}: the disk is full")):
        trainer.fit(Wide(), regression_loader(16))
    assert trainer.current_epoch == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["epoch=0.ckpt"]
    assert load_checkpoint(small_disk / "epoch=0.ckpt")["epoch"] == 0


_NO_PERMISSION = textwrap.dedent(
    """
    import os, sys, torch
    from torchplug._checkpoint import atomic_save, load_checkpoint
    from torchplug._errors import CheckpointWriteError, MisconfigurationError

    warm_up, target = sys.argv[1], sys.argv[2]
    atomic_save({"state_dict": {"w": torch.ones(2)}}, warm_up)  # every module the write needs is imported now
    if os.geteuid() == 0:
        os.seteuid(65534)  # root may write anywhere: act as 'nobody' for the write that matters
    try:
        atomic_save({"state_dict": {"w": torch.ones(2)}}, target)
    except CheckpointWriteError as err:
        print(err.errno, err, sep="|")
    try:
        load_checkpoint(sys.argv[3])
    except MisconfigurationError as err:
        print(err)
    """
)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every user can reach (pytest's own are private to their owner), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="torchplug-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_no_permission_names_the_folder(open_folder: Path) -> None:
    tmp_path = open_folder
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "old.ckpt").write_bytes(b"previous")
    secret = tmp_path / "secret.ckpt"
    atomic_save({"state_dict": {}}, secret)
    secret.chmod(0o600)
    locked.chmod(0o555)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _NO_PERMISSION, str(tmp_path / "warm.ckpt"), str(locked / "new.ckpt"), str(secret)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        locked.chmod(0o755)
    written, read = done.stdout.strip().splitlines()[-2:]
    assert read == f"could not read the checkpoint {str(secret)!r}: Permission denied (EACCES)", done.stdout
    code, _, message = written.partition("|")
    assert code == str(errno.EACCES), done.stdout + done.stderr
    assert message == (
        f"could not write the checkpoint {str(locked / 'new.ckpt')!r}: permission denied (EACCES): this user may not "
        f"create files in {str(locked)!r}. Nothing was replaced: the checkpoints already there are kept, and the "
        "partly written temporary file was removed"
    )
    assert sorted(p.name for p in locked.iterdir()) == ["old.ckpt"]


_CANNOT_DELETE = textwrap.dedent(
    """
    import os, sys, warnings
    import torchplug
    from torchplug.callbacks import ModelCheckpoint
    from torchplug.testing import BoringModel, regression_loader

    class BecomeNobody(torchplug.Callback):
        # epoch=0.ckpt was written as root; in a sticky folder 'nobody' may add files but not delete root's
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                os.seteuid(65534)

    folder = sys.argv[1]
    trainer = torchplug.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=folder,
                                callbacks=[BecomeNobody(), ModelCheckpoint(dirpath=folder, filename="{epoch}")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(BoringModel(), regression_loader(16))
    print(trainer.global_step, sorted(os.listdir(folder)))
    print([str(w.message) for w in caught if "could not delete" in str(w.message)])
    """
)


def test_a_checkpoint_that_cannot_be_deleted_is_named_and_training_goes_on(open_folder: Path) -> None:
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("needs root, to act as another user in a sticky folder")
    folder = open_folder / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", _CANNOT_DELETE, str(folder)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    listing, warned = done.stdout.strip().splitlines()[-2:]
    assert listing == "4 ['epoch=0.ckpt', 'epoch=1.ckpt']"
    assert f"ModelCheckpoint could not delete {str(folder / 'epoch=0.ckpt')!r}" in warned
    assert "Operation not permitted (EPERM); delete it yourself" in warned


def test_a_directory_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.ckpt").mkdir()
    with pytest.raises(CheckpointWriteError, match="x.ckpt': a directory of that name is in the way"):
        atomic_save({"state_dict": {}}, tmp_path / "x.ckpt")


def _temporary_prefix(path: Path) -> str:
    """``.<name>.tmp.<host>.``: what :func:`temporary_path` names ``path``'s temporaries with, before pid and random."""
    return temporary_path(path).name.rsplit(".", 2)[0] + "."


def _dead_pid() -> int:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(dead.stdout)


def test_temporary_path_removes_what_killed_saves_of_that_path_left(tmp_path: Path) -> None:
    target, other = tmp_path / "last.ckpt", tmp_path / "other.ckpt"
    pid = _dead_pid()
    stale_file = tmp_path / f"{_temporary_prefix(target)}{pid}.0a1b2c3d"
    stale_file.write_bytes(b"partial")
    stale_directory = tmp_path / f"{_temporary_prefix(target)}{pid}.deadbeef"  # a sharded save's
    (stale_directory / "shard").mkdir(parents=True)
    live = tmp_path / f"{_temporary_prefix(target)}{os.getpid()}.0a1b2c3d"
    live.write_bytes(b"being written")
    someone_elses = tmp_path / f"{_temporary_prefix(other)}{pid}.0a1b2c3d"
    someone_elses.write_bytes(b"partial")
    fresh = temporary_path(target)
    assert fresh.parent == tmp_path and fresh.name.startswith(".last.ckpt.tmp.") and not fresh.exists()
    assert fresh.name.split(".")[-2] == str(os.getpid()) and fresh != temporary_path(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, someone_elses.name])


def test_stale_temporaries_of_killed_processes_are_removed_folder_wide(tmp_path: Path) -> None:
    pid = _dead_pid()
    prefix = _temporary_prefix(tmp_path / "epoch=3.ckpt")
    left = [tmp_path / f"{prefix}{pid}.0a1b2c3d", tmp_path / f"{prefix}{os.getpid()}.0a1b2c3d"]
    for path in left:
        path.write_bytes(b"partial")
    sharded = f"{_temporary_prefix(tmp_path / 'sharded.ckpt')}{pid}.deadbeef"
    (tmp_path / sharded).mkdir()  # a sharded save's
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([left[0].name, sharded])
    assert [p.name for p in tmp_path.iterdir()] == [left[1].name]  # a live process's file is left alone


@pytest.mark.gpu
@pytest.mark.xdist_group("gpu")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_are_written_as_cpu_tensors(tmp_path: Path) -> None:
    path = tmp_path / "gpu.ckpt"
    weight = torch.randn(4, 4, device="cuda")
    atomic_save({"state_dict": {"w": weight}, "opt": [{"exp_avg": weight * 2}]}, path)
    assert torch.load(path, weights_only=True)["state_dict"]["w"].device.type == "cpu"  # no map_location needed
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], weight.cpu()) and loaded["opt"][0]["exp_avg"].device.type == "cpu"
