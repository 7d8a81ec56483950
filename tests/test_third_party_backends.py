"""Third-party backends for real: throwaway packages with their own pyproject.toml and entry points are built and
installed with pip into a temporary target, then selected by name in a fresh interpreter.

The conformance kit (torchplug.testing.conformance) runs on them too: on the local-SGD example of
docs/writing-a-backend.md (examples/torchplug-localsgd), which passes it, and on a package of deliberately broken
backends, one defect each, which it catches, naming each defect.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import torchplug
from torchplug.testing import QUIET, subprocess_env

PROBE_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "torchplug-probe"
version = "1.2.3"
dependencies = ["torchplug"]

[project.entry-points."torchplug.strategies"]
probe = "torchplug_probe:ProbeStrategy"

[project.entry-points."torchplug.precisions"]
probe-precision = "torchplug_probe:ProbePrecision"
"""

PROBE_MODULE = '''
"""A strategy and a precision plugin that record every hook call and step operation they answer."""

import torch

from torchplug import hookimpl
from torchplug.precision import Precision
from torchplug.strategies import Strategy

CALLS = []


class ProbeStrategy(Strategy):
    def __init__(self, probe_scale: float = 1.0):
        self.probe_scale = probe_scale

    @hookimpl
    def torchplug_setup_environment(self, trainer):
        CALLS.append("setup_environment")

    @hookimpl
    def torchplug_wrap_module(self, trainer, module):
        CALLS.append("wrap_module")
        return module

    @hookimpl
    def torchplug_all_reduce(self, trainer, tensor, op):
        CALLS.append(f"all_reduce:{op}")
        return tensor * self.probe_scale

    @hookimpl
    def torchplug_teardown(self, trainer):
        CALLS.append("teardown")


class ProbePrecision(Precision):
    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer):
        ops = yield
        forward, backward = ops.forward, ops.backward

        def recorded_forward(stage, args):
            CALLS.append(f"forward:{stage}")
            return forward(stage, args)

        def recorded_backward(loss, optimizer):
            CALLS.append("backward")
            backward(loss, optimizer)

        ops.forward, ops.backward = recorded_forward, recorded_backward
        return ops

    @hookimpl
    def torchplug_state_dict(self, trainer):
        return {"probe": {"calls": len(CALLS)}}
'''

BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "torchplug-broken"
version = "0.0.1"

[project.entry-points."torchplug.strategies"]
broken = "torchplug_broken:BrokenStrategy"
"""

BROKEN_MODULE = 'raise ImportError("needs libfoo 3, found libfoo 2")\n'

TWIN_PYPROJECT = PROBE_PYPROJECT.replace('name = "torchplug-probe"', 'name = "torchplug-probe-twin"').replace(
    'probe-precision = "torchplug_probe:ProbePrecision"', ""
)


def _package(root: Path, pyproject: str, module_name: str, module: str) -> Path:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    (root / f"{module_name}.py").write_text(textwrap.dedent(module))
    return root


def _install(target: Path, *packages: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *map(str, packages)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip


def _run(target: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=subprocess_env(target), capture_output=True,
                          text=True)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("third_party")
    probe = _package(base / "probe", PROBE_PYPROJECT, "torchplug_probe", PROBE_MODULE)
    broken = _package(base / "broken", BROKEN_PYPROJECT, "torchplug_broken", BROKEN_MODULE)
    target = base / "site"
    _install(target, probe, broken)
    return target


SELECT_PROBE = """
    import json, torch, torchplug, torchplug_probe
    from torchplug.testing import QUIET, BoringModel, regression_loader
    trainer = torchplug.Trainer(accelerator="cpu", strategy="probe", precision="probe-precision", probe_scale=2.0,
                                max_steps=2, **QUIET)
    class Logged(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("synced", torch.tensor(1.5), sync_dist=True, reduce_fx="max")
            return loss
    trainer.fit(Logged(), regression_loader(32, 8))
    from torchplug._state import dump_checkpoint
    checkpoint = dump_checkpoint(trainer, weights_only=False)
    print(json.dumps({"calls": torchplug_probe.CALLS, "synced": float(trainer.callback_metrics["synced"]),
                      "strategy": trainer.strategy_name, "plugins": checkpoint["ranks"][0]["plugins"]}))
"""


def test_installed_backend_is_selected_by_name_and_its_hooks_run(installed):
    result = _run(installed, SELECT_PROBE)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    calls = out["calls"]
    assert calls[0] == "setup_environment" and calls[-1] == "teardown"
    assert "wrap_module" in calls and calls.count("forward:train") == 2 and calls.count("backward") == 2
    assert "all_reduce:max" in calls
    assert out["synced"] == 3.0  # the option probe_scale=2.0 reached the plugin's constructor
    assert out["strategy"] == "probe" and "probe" in out["plugins"]  # rank 0's plugin states (format 2)


def test_broken_backend_is_reported_and_the_others_keep_working(installed):
    result = _run(
        installed,
        """
        import traceback, torchplug
        from torchplug.testing import QUIET
        try:
            torchplug.Trainer(strategy="broken", **QUIET)
        except torchplug.PluginLoadError as err:
            print("ERROR:", err)
            print("CAUSE:", repr(err.__cause__))
            print("TRACEBACK-HAS-MODULE:", "torchplug_broken.py" in "".join(traceback.format_exception(err)))
        trainer = torchplug.Trainer(accelerator="cpu", strategy="probe", **QUIET)
        print("OK:", trainer.strategy_name)
        """,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "the strategy 'broken' from distribution 'torchplug-broken' 0.0.1 failed to import" in out
    assert "needs libfoo 3, found libfoo 2" in out
    assert "CAUSE: ImportError" in out and "TRACEBACK-HAS-MODULE: True" in out
    assert "OK: probe" in out


def test_cli_lists_and_checks_installed_backends(installed):
    env = subprocess_env(installed)
    run = [sys.executable, "-m", "torchplug.cli", "plugins"]
    listing = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    assert "probe" in listing and "torchplug-probe" in listing and "1.2.3" in listing
    assert "torchplug_broken" not in listing  # listing reads metadata only; nothing is imported
    checked = subprocess.run([*run, "--check"], env=env, capture_output=True, text=True)
    assert checked.returncode == 1  # a backend that does not import is a problem --check reports
    broken_row = next(line for line in checked.stdout.splitlines() if line.strip().startswith("broken"))
    assert "no: ImportError: needs libfoo 3" in broken_row
    assert "strategy 'broken' (torchplug-broken 0.0.1): does not import: ImportError: needs libfoo 3" in checked.stderr
    probe_row = next(line for line in checked.stdout.splitlines() if line.strip().startswith("probe "))
    assert "yes" in probe_row


def test_two_distributions_claiming_one_name_are_both_named(installed, tmp_path):
    twin = _package(tmp_path / "twin", TWIN_PYPROJECT, "torchplug_probe_twin", "")
    target = tmp_path / "site"
    _install(target, twin)
    result = subprocess.run(
        [sys.executable, "-c", "import torchplug; from torchplug.testing import QUIET; torchplug.Trainer(strategy='probe', **QUIET)"],
        env=subprocess_env(installed, target), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "claimed by 2 installed distributions" in result.stderr
    assert "torchplug-probe 1.2.3" in result.stderr and "torchplug-probe-twin 1.2.3" in result.stderr


def test_hook_tracing_prints_each_call_with_its_plugin(installed):
    env = subprocess_env(installed, TORCHPLUG_TRACE_HOOKS="1")
    code = (
        "import torchplug; from torchplug.testing import QUIET, BoringModel, regression_loader;"
        "torchplug.Trainer(accelerator='cpu', strategy='probe', max_steps=1, **QUIET)"
        ".fit(BoringModel(), regression_loader(16, 8))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[torchplug hook] torchplug_wrap_module -> torchplug._defaults, strategy:probe" in result.stderr
    # the bound step operations are traced too, naming the function that implements each
    assert "[torchplug hook] step.backward -> torchplug._step.default_step_ops.<locals>.backward" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Mistakes in a plugin are caught when it is registered, and by `torchplug plugins --check`
# ---------------------------------------------------------------------------------------------------------------
FAULTY_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "torchplug-faulty"
version = "0.3.0"

[project.entry-points."torchplug.precisions"]
misspelled = "torchplug_faulty:Misspelled"
undecorated = "torchplug_faulty:Undecorated"
generator = "torchplug_faulty:GeneratorNotWrapper"
typo = "torchplug_faulty:ParameterTypo"

[project.entry-points."torchplug.accelerators"]
raising = "torchplug_faulty:RaisingAccelerator"
"""

FAULTY_MODULE = '''
from torchplug import hookimpl
from torchplug.accelerators import Accelerator
from torchplug.precision import Precision


class Misspelled(Precision):
    @hookimpl
    def torchplug_step_op(self, trainer):
        return None


class Undecorated(Precision):
    def torchplug_setup_environment(self, trainer):
        raise AssertionError("never registered, so never called")


class GeneratorNotWrapper(Precision):
    @hookimpl
    def torchplug_step_ops(self, trainer):
        ops = yield
        return ops


class ParameterTypo(Precision):
    @hookimpl
    def torchplug_all_reduce(self, trainer, tensr, op):
        return tensr


class RaisingAccelerator(Accelerator):
    device_type = "cpu"
    priority = 1000

    @classmethod
    def is_available(cls):
        raise OSError("libraising.so: cannot open shared object file")
'''


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faulty")
    package = _package(base / "faulty", FAULTY_PYPROJECT, "torchplug_faulty", FAULTY_MODULE)
    target = base / "site"
    _install(target, package)
    return target


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("misspelled", "'torchplug_step_op' is not a torchplug hook, so it would never be called; did you mean "
                       "'torchplug_step_ops'?"),
        ("undecorated", "'torchplug_setup_environment' is not decorated with @hookimpl"),
        ("generator", "'torchplug_step_ops' is a generator (it yields), but it is not marked @hookimpl(wrapper=True)"),
        ("typo", "'torchplug_all_reduce' takes 'tensr' (did you mean 'tensor'?), which the hook does not pass"),
    ],
)  # fmt: skip
def test_a_plugin_breaking_the_hook_contract_is_refused_naming_it(faulty, precision, expected):
    code = f"""
        import torchplug
        from torchplug.testing import QUIET
        try:
            torchplug.Trainer(accelerator="cpu", precision={precision!r}, **QUIET)
        except torchplug.PluginError as err:
            print(err)
        """
    result = _run(faulty, code)
    assert result.returncode == 0, result.stderr
    assert f"the precision:{precision} plugin torchplug_faulty." in result.stdout
    assert "(distribution torchplug-faulty 0.3.0)" in result.stdout
    assert expected in result.stdout


def test_an_accelerator_whose_probe_raises_is_skipped_by_auto_with_its_name(faulty):
    result = _run(
        faulty,
        """
        import warnings, torchplug
        from torchplug.testing import QUIET
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = torchplug.Trainer(**QUIET)
        print("SELECTED:", trainer.accelerator_name)
        print("\\n".join(str(w.message) for w in caught))
        """,
    )
    assert result.returncode == 0, result.stderr
    # what auto picks here without the faulty package (cpu, or cuda on a machine with a GPU)
    assert f"SELECTED: {torchplug.Trainer(**QUIET).accelerator_name}" in result.stdout  # not a bare OSError
    assert (
        "skipping the accelerator 'raising' (distribution torchplug-faulty 0.3.0) for accelerator='auto': "
        "is_available() raised OSError: libraising.so" in result.stdout
    )


def test_plugins_check_reports_every_faulty_plugin_and_fails(faulty):
    env = subprocess_env(faulty)
    checked = subprocess.run([sys.executable, "-m", "torchplug.cli", "plugins", "--check"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 1, checked.stdout
    problems = checked.stderr
    assert "precision 'misspelled' (torchplug-faulty 0.3.0): hook contract: 'torchplug_step_op' is not a torchplug hook" in problems
    assert "precision 'undecorated' (torchplug-faulty 0.3.0): hook contract:" in problems
    assert "precision 'generator' (torchplug-faulty 0.3.0): hook contract:" in problems
    assert "precision 'typo' (torchplug-faulty 0.3.0): hook contract:" in problems
    assert "accelerator 'raising' (torchplug-faulty 0.3.0): is_available() raised OSError" in problems


# ---------------------------------------------------------------------------------------------------------------
# A third-party strategy built on a built-in one: examples/torchplug-localsgd subclasses torchplug-ddp's DDPStrategy
# ---------------------------------------------------------------------------------------------------------------
LOCALSGD = Path(__file__).resolve().parents[1] / "examples" / "torchplug-localsgd"

LOCALSGD_SCRIPT = """
import json, os, sys
import torch
import torchplug
from torchplug.testing import QUIET, BoringModel, regression_loader

out, fail_at = sys.argv[1], int(sys.argv[2])


class Record(torchplug.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == fail_at:
            raise ValueError(f"rank 1 gave up at step {fail_at}")
        weights = torch.cat([p.detach().flatten() for p in module.parameters()]).tolist()
        with open(os.path.join(out, f"rank{trainer.global_rank}.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": trainer.global_step, "weights": weights}) + "\\n")


torchplug.seed_everything(0)
trainer = torchplug.Trainer(accelerator="cpu", strategy="localsgd", devices=2, local_sgd_period=2, max_steps=4,
                            callbacks=[Record()], **QUIET)
trainer.fit(BoringModel(), regression_loader(64, 8, shuffle=True))
"""


@pytest.fixture(scope="module")
def localsgd(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("localsgd") / "site"
    _install(target, LOCALSGD)
    return target


def _train_localsgd(target: Path, tmp_path: Path, fail_at: int = -1) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train_localsgd.py"
    script.write_text(LOCALSGD_SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp_path), str(fail_at)], env=subprocess_env(target),
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def test_a_strategy_subclassing_ddp_installs_and_trains_with_local_sgd(localsgd, tmp_path):
    result = _train_localsgd(localsgd, tmp_path)
    assert result.returncode == 0, result.stderr
    ranks = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [row["step"] for row in ranks[0]] == [1, 2, 3, 4] == [row["step"] for row in ranks[1]]
    for zero, one in zip(*ranks):
        # each rank steps on its own shard of the data, so the weights part, and meet every local_sgd_period steps
        averaged = zero["step"] % 2 == 0
        assert (zero["weights"] == pytest.approx(one["weights"], abs=1e-7)) is averaged, zero["step"]


@pytest.mark.slow
def test_the_local_sgd_example_passes_the_conformance_kit(localsgd, tmp_path):
    (tmp_path / "test_localsgd.py").write_text(
        'from torchplug.testing import conformance\n\nTestLocalSGD = conformance("strategy", "localsgd")\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", f"--basetemp={tmp_path / 'kit'}",
         "test_localsgd.py"],
        cwd=tmp_path, env=subprocess_env(localsgd), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    passed = {line.split("::")[-1].strip() for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    for check in ("options_reach_the_backend", "trains_in_processes", "per_rank_state_survives_checkpoints",
                  "resumes_bitwise_in_processes", "rank_that_raises_is_reported_once", "rank_that_dies_ends_the_job"):
        assert f"test_{check}" in passed, result.stdout[-6000:]


def test_the_subclass_keeps_the_launchers_failure_report(localsgd, tmp_path):
    result = _train_localsgd(localsgd, tmp_path, fail_at=3)
    assert result.returncode != 0
    assert result.stderr.count("rank 1 (pid") == 1, result.stderr  # the root cause, reported once
    assert "raised ValueError: rank 1 gave up at step 3" in result.stderr
    assert "Connection closed by peer" not in result.stderr.split("ProcessFailedError")[-1]


# ---------------------------------------------------------------------------------------------------------------
# The conformance kit (torchplug.testing.conformance) finds each defect of a backend, naming it
# ---------------------------------------------------------------------------------------------------------------
DEFECTS_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "torchplug-defects"
version = "0.0.1"
dependencies = ["torchplug", "torchplug-ddp"]

[project.entry-points."torchplug.precisions"]
misspelled-hook = "torchplug_defects:MisspelledHookPrecision"
leasing = "torchplug_defects:LeasingPrecision"
sloppy = "torchplug_defects:SloppyPrecision"
jitter = "torchplug_defects:JitterPrecision"

[project.entry-points."torchplug.strategies"]
rank-zero-checkpoints = "torchplug_defects:RankZeroCheckpointStrategy"
locked-spawn = "torchplug_defects:LockedSpawnStrategy"
fragile-teardown = "torchplug_defects:FragileTeardownStrategy"
unwatched = "torchplug_defects:UnwatchedLaunchStrategy"
swallowing = "torchplug_defects:SwallowingStrategy"
forgetful-localsgd = "torchplug_defects:ForgetfulLocalSGDStrategy"

[project.entry-points."torchplug.accelerators"]
raising-probe = "torchplug_defects:RaisingProbeAccelerator"
"""

DEFECTS_MODULE = '''
"""Backends with one defect each, for the conformance kit to find."""

import os
import subprocess
import sys
import threading

import torch

from torchplug import hookimpl
from torchplug.accelerators.cpu import CPUAccelerator
from torchplug.precision import Precision
from torchplug.strategies import Strategy
from torchplug_ddp import DDPSpawnStrategy, DDPStrategy


class MisspelledHookPrecision(Precision):
    @hookimpl(wrapper=True)
    def torchplug_step_op(self, trainer):  # the hook is torchplug_step_ops
        ops = yield
        return ops


_DEVICE = threading.Semaphore(1)


class LeasingPrecision(Precision):
    """Leases "the device" in setup and never gives it back: the second fit of a script waits forever."""

    @hookimpl
    def torchplug_setup_environment(self, trainer):
        _DEVICE.acquire()


class SloppyPrecision(Precision):
    """Swallows keywords it does not know: SloppyPrecision(sloppy_scal=2) is silently a scale of 1."""

    def __init__(self, sloppy_scale=1.0, **unused):
        self.sloppy_scale = sloppy_scale


class JitterPrecision(Precision):
    """Jitters the loss from a generator of its own, which it does not save with the checkpoint."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer):
        ops = yield
        backward = ops.backward

        def jittered(loss, optimizer):
            backward(loss * (1 + 0.5 * torch.rand((), generator=self.generator)), optimizer)

        ops.backward = jittered
        return ops


class RankZeroCheckpointStrategy(DDPStrategy):
    """Writes rank 0's checkpoint as it is, without gathering the other ranks' sections."""

    @hookimpl
    def torchplug_save_checkpoint(self, trainer, checkpoint, path):
        if trainer.is_global_zero:
            torch.save(checkpoint, path)
        trainer.barrier()
        return True


class LockedSpawnStrategy(DDPSpawnStrategy):
    def __init__(self, **options):
        super().__init__(**options)
        self.lock = threading.Lock()


class FragileTeardownStrategy(Strategy):
    @hookimpl
    def torchplug_wrap_module(self, trainer, module):
        self.wrapped = module
        return module

    @hookimpl
    def torchplug_teardown(self, trainer):
        del self.wrapped  # AttributeError when setup stopped before torchplug_wrap_module


class UnwatchedLaunchStrategy(DDPStrategy):
    """Starts the other ranks by re-running the command, and never watches them."""

    @hookimpl
    def torchplug_launch(self, trainer, function):
        info = self.cluster_info(trainer)
        if info.creates_processes_externally or info.world_size == 1:
            return (function(),)
        common = {"MASTER_ADDR": info.main_address, "MASTER_PORT": str(info.main_port),
                  "WORLD_SIZE": str(info.world_size)}
        for rank in range(1, info.world_size):
            env = {**os.environ, **common, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env)
        os.environ.update(common, RANK="0", LOCAL_RANK="0")
        return (function(),)


class SwallowingStrategy(DDPStrategy):
    """Takes DDP's options (**ddp_options), as a subclass may, and drops them."""

    def __init__(self, swallowing_period=2, **ddp_options):
        super().__init__()
        self.swallowing_period = swallowing_period


class ForgetfulLocalSGDStrategy(DDPStrategy):
    """Local SGD whose ranks' own parameters (they differ between averagings) are not saved per rank."""

    def wrap(self, trainer, module):
        ddp = super().wrap(trainer, module)
        ddp.register_comm_hook(None, _keep_local_gradients)
        return ddp

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer):
        ops = yield from super().torchplug_step_ops(trainer)
        step = ops.optimizer_step

        def step_then_average(optimizer, closure, **kwargs):
            taken = step(optimizer, closure, **kwargs)
            if (trainer.global_step + 1) % 4 == 0:
                for parameter in trainer.lightning_module.parameters():
                    torch.distributed.all_reduce(parameter.data)
                    parameter.data /= trainer.world_size
            return taken

        ops.optimizer_step = step_then_average
        return ops


def _keep_local_gradients(state, bucket):
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


class RaisingProbeAccelerator(CPUAccelerator):
    @classmethod
    def is_available(cls):
        raise OSError("libdevice.so: cannot open shared object file")
'''

DEFECTS_TESTS = """
from torchplug.testing import conformance

TestMisspelledHook = conformance("precision", "misspelled-hook")
TestLeasing = conformance("precision", "leasing", timeout=20)
TestSloppy = conformance("precision", "sloppy")
TestJitter = conformance("precision", "jitter")
TestRankZeroCheckpoints = conformance("strategy", "rank-zero-checkpoints")
TestLockedSpawn = conformance("strategy", "locked-spawn")
TestFragileTeardown = conformance("strategy", "fragile-teardown")
TestUnwatched = conformance("strategy", "unwatched", timeout=60)
TestSwallowing = conformance("strategy", "swallowing")
TestRaisingProbe = conformance("accelerator", "raising-probe")
TestForgetfulLocalSGD = conformance("strategy", "forgetful-localsgd")
"""

# (test class, check, what the failure must say): one deliberate defect each
DEFECTS = [
    ("TestMisspelledHook", "hook_implementations_match_the_hookspecs",
     ["'torchplug_step_op' is not a torchplug hook", "did you mean 'torchplug_step_ops'?"]),
    ("TestLeasing", "two_fits_in_one_process",
     ["did not finish within 20 s (a hang)", "the second fit() of the process"]),
    ("TestSloppy", "misspelled_options_are_refused",
     ["SloppyPrecision(sloppy_scal=1) was accepted", "silently ignored"]),
    ("TestJitter", "resumes_mid_epoch_bitwise",
     ["resuming mid-epoch is not bitwise exact", "after step 7", "torchplug_get_rng_states"]),
    ("TestRankZeroCheckpoints", "per_rank_state_survives_checkpoints",
     ["holds the per-rank state of 1 rank(s)", "torchplug_save_checkpoint must gather every rank's"]),
    ("TestLockedSpawn", "picklable", ["cannot be pickled", "cannot pickle '_thread.lock' object", "spawn"]),
    ("TestFragileTeardown", "teardown_after_failed_setup",
     ["injected in torchplug_setup_module", "raised AttributeError",
      "torchplug_teardown must not raise when setup did not finish"]),
    ("TestUnwatched", "rank_that_raises_is_reported_once",
     ["rank 1 raised KitInjectedFailure at step 2", "instead of torchplug.ProcessFailedError naming rank 1"]),
    ("TestUnwatched", "rank_that_dies_ends_the_job",
     ["rank 1 was killed by SIGKILL at step 2", "instead of torchplug.ProcessFailedError naming rank 1"]),
    ("TestSwallowing", "options_reach_the_backend",
     ["never reached DDPStrategy.__init__", "super().__init__(**kwargs)"]),
    ("TestRaisingProbe", "availability_probe_is_cheap_and_never_raises",
     ["is_available() raised OSError: libdevice.so", "must never raise"]),
    ("TestForgetfulLocalSGD", "resumes_bitwise_in_processes",
     ["resuming mid-epoch is not bitwise exact: on rank", "The ranks' parameters differed when the checkpoint was saved",
      "parameters that differ per rank are state to save per rank"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def kit_on_defects(tmp_path_factory) -> dict[tuple[str, str], tuple[str, str]]:
    """Runs the kit's checks that should catch each defect, in one pytest process: (class, check) -> outcome."""
    import xml.etree.ElementTree as ElementTree

    base = tmp_path_factory.mktemp("defects")
    package = _package(base / "defects", DEFECTS_PYPROJECT, "torchplug_defects", DEFECTS_MODULE)
    target = base / "site"
    _install(target, package)
    (base / "test_defects.py").write_text(textwrap.dedent(DEFECTS_TESTS))
    report = base / "report.xml"
    node_ids = [f"test_defects.py::{cls}::test_{check}" for cls, check, _ in DEFECTS]
    subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}",
         f"--basetemp={base / 'kit'}", *node_ids],
        cwd=base, env=subprocess_env(target), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        failure = case.find("failure")
        status = "failed" if failure is not None else ("skipped" if case.find("skipped") is not None else "passed")
        text = (failure.get("message", "") + (failure.text or "")) if failure is not None else ""
        outcomes[(case.get("classname").rsplit(".", 1)[-1], case.get("name"))] = (status, text)
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "check", "expected"), DEFECTS, ids=[f"{c}-{k}" for c, k, _ in DEFECTS])
def test_the_conformance_kit_catches_each_defect_naming_it(kit_on_defects, cls, check, expected):
    status, message = kit_on_defects[(cls, f"test_{check}")]
    assert status == "failed", f"the kit did not catch {cls}'s defect in test_{check}: {status}"
    for words in expected:
        assert words in message, message
