"""``torchplug.distributed``'s script launcher and its watchdog (``_launcher.py``), with plain Python children (no
torch.distributed): the command is re-run with the right variables, and any failure stops every process, once
reported, with no orphans."""

import os
import sys

import pytest
from distributed_test_support import PYTHON, clean_environment, processes_mentioning, run, write_script

CHILD = """
import os, signal, sys, threading, time
from torchplug.distributed import _launcher

MODE, OUT = sys.argv[1], sys.argv[2]

def work():
    rank = int(os.environ["RANK"])
    with open(os.path.join(OUT, f"rank{rank}.txt"), "w") as fh:
        fh.write(" ".join([os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")] + sys.argv[1:]))
    with open(os.path.join(OUT, f"rank{rank}.launcher"), "w") as fh:
        fh.write(" ".join(os.environ.get(k, "-") for k in ("TORCHPLUG_LAUNCHER_PID", "TORCHPLUG_ERROR_DIR")) + f" {os.getpid()}")
    if rank == 1 and MODE == "raise":
        raise ValueError("boom-from-rank-1")
    if rank == 1 and MODE == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == 1 and MODE == "exit":
        sys.exit(3)
    if rank == 1 and MODE == "stuck":
        time.sleep(0.5)
        raise ValueError("boom-from-rank-1")
    if rank == 0 and MODE in ("raise", "kill", "exit"):
        while True:  # rank 0 busy in Python, like a training loop: the watchdog must stop it
            time.sleep(0.05)
    if rank == 0 and MODE == "stuck":
        threading.Event().wait()  # blocked in C, like a rendezvous that cannot finish
    if rank == 0 and MODE == "raise0":
        time.sleep(0.3)
        raise KeyError("boom-from-rank-0")
    if (rank != 0 and MODE == "raise0") or MODE == "hold":
        time.sleep(600)
    return rank * 10

if _launcher.launched_child():
    _launcher.run_child(work, int(os.environ["RANK"]))
    if MODE == "late" and os.environ["RANK"] == "1":
        time.sleep(1.0)
        raise RuntimeError("late-failure-on-rank-1")
    if MODE == "ok" and os.environ["RANK"] == "1":  # still running when rank 0 is done: rank 0 waits for it
        time.sleep(1.0)
        open(os.path.join(OUT, "late-child-done"), "w").close()
else:
    print("rank 0 got", _launcher.launch(work, num_processes=2, main_port=23456), flush=True)
    print("launcher pid", os.getpid(), flush=True)
"""


@pytest.fixture
def child(tmp_path):
    return write_script(tmp_path, CHILD, "child.py")


@pytest.mark.timeout(60)
def test_the_command_is_rerun_for_every_local_rank_and_waited_for(tmp_path, child):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ran = run([PYTHON, "-u", str(child), "ok", str(tmp_path), "--flag=1"], tmp_path, env={"TMPDIR": str(scratch)}).check()
    assert "rank 0 got 0" in ran.stdout
    launcher_pid = ran.stdout.split("launcher pid ")[1].split()[0]
    assert list(scratch.iterdir()) == []  # the launcher's error folder is removed after a clean run
    for rank in range(2):
        fields = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert fields == [str(rank), str(rank), "2", "0", "127.0.0.1", "23456", "ok", str(tmp_path), "--flag=1"]
    assert (tmp_path / "late-child-done").exists()
    # the child knows its launcher and where to record a failure (TORCHPLUG_LAUNCHER_PID, TORCHPLUG_ERROR_DIR)
    pid, error_dir, own_pid = (tmp_path / "rank1.launcher").read_text().split()
    assert pid == launcher_pid != own_pid and error_dir.startswith(str(scratch / "torchplug-launch-"))
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize(
    ("orig_argv", "argv", "expected"),
    [
        (["py", "train.py", "--lr", "1"], ["train.py", "--lr", "1"], ["<main>", "--lr", "1"]),
        (["py", "-u", "-X", "dev", "-Wignore", "train.py", "a"], ["train.py", "a"], ["-u", "-X", "dev", "-Wignore", "<main>", "a"]),
        (["py", "-m", "pkg.train", "a"], ["/abs/pkg/train.py", "a"], ["-m", "pkg.train", "a"]),
        (["py", "-um", "pkg.train"], ["/abs/pkg/train.py"], ["-um", "pkg.train"]),
        (["py", "-c", "print(1)", "a"], ["-c", "a"], ["-c", "print(1)", "a"]),
        (["py", "-B", "-c", "print(1)"], ["-c"], ["-B", "-c", "print(1)"]),
    ],
)
def test_rerun_command_handles_scripts_modules_and_code(monkeypatch, orig_argv, argv, expected):
    from torchplug.distributed import rerun_command

    main = sys.modules["__main__"]
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(main, "__file__", os.path.abspath(__file__), raising=False)
    assert rerun_command() == [os.path.abspath(__file__) if a == "<main>" else a for a in expected]


def test_an_interactive_session_cannot_be_rerun(monkeypatch):
    from torchplug import MisconfigurationError
    from torchplug.distributed import rerun_command

    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    with pytest.raises(MisconfigurationError, match="strategy='ddp_spawn'"):
        rerun_command()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("mode", "report"),
    [
        ("raise", r"rank 1 \(pid \d+\) raised ValueError: boom-from-rank-1"),
        ("kill", r"rank 1 \(pid \d+\) was killed by SIGKILL"),
        ("exit", r"rank 1 \(pid \d+\) exited with code 3"),
        ("stuck", r"rank 0 did not stop within 2 s; ending it. rank 1 \(pid \d+\) raised ValueError: boom-from-rank-1"),
        ("late", r"rank 1 \(pid \d+\) raised RuntimeError: late-failure-on-rank-1"),
    ],
)
def test_a_failing_child_stops_everyone_and_is_reported_once(tmp_path, child, mode, report):
    ran = run([PYTHON, str(child), mode, str(tmp_path)], tmp_path, env={"TORCHPLUG_GRACE": "2"})
    assert ran.returncode != 0
    assert ran.seconds < 60
    import re

    assert len(re.findall(report, ran.output)) == 1, ran.output
    assert ran.output.count("Traceback (most recent call last)") <= 2  # rank 0's own frames + the child's
    if mode in ("raise", "stuck", "late"):  # the child's traceback, source line included, appears once
        assert ran.output.count('raise ValueError("boom-from-rank-1")' if mode != "late" else 'raise RuntimeError("late-failure-on-rank-1")') == 1
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.timeout(60)
def test_rank_0_failing_stops_the_children_and_its_own_traceback_is_shown_once(tmp_path, child):
    ran = run([PYTHON, str(child), "raise0", str(tmp_path)], tmp_path)
    assert ran.returncode == 1
    assert ran.output.count("KeyError: 'boom-from-rank-0'") == 1
    assert "rank 1" not in ran.output
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_a_sigkilled_rank_0(tmp_path, child):
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([PYTHON, str(child), "hold", str(tmp_path)], cwd=tmp_path, env=clean_environment())
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"rank{r}.txt").exists() for r in range(2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all((tmp_path / f"rank{r}.txt").exists() for r in range(2)), "the ranks never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_mentioning(str(tmp_path)) == []
    finally:
        proc.kill()
