"""Lightning's example modules, ported by changing their imports only, train the same on torchplug as on Lightning.

    python3 scripts/lightning_parity/run_examples.py .lightning-src

The sources must hold Lightning's examples (``git archive COMMIT src/lightning tests examples/pytorch``; README.md).
Each example file is loaded unmodified, once by ``.venv/bin/python`` with its ``lightning.pytorch`` imports resolved
by the rename-only shim (``shim/``) to torchplug, and once by ``.venv-oracle/bin/python`` with pytorch-lightning
2.6.6, each in a fresh process and folder; then its own entry point runs (``cli_main()`` through its own
``LightningCLI``; for the GAN, whose ``main`` asks for a GPU, its module and the Trainer it would build, on the CPU)
and what each run reports must be equal: the steps, the logged metrics, a checksum of the weights, the predictions.

What cannot run here is replaced in the example's namespace, the same for both frameworks, and said so:

* MNIST (``lightning.pytorch.demos.mnist_datamodule``): its download needs the network. ``SyntheticMNIST`` has
  MNIST's sizes (60000/10000 images of 1x28x28, labels 0-9), each image drawn from a generator seeded by its index.
* torchvision: PyPI's builds do not import beside the CPU torch 2.13.0 used here. ``transforms.ToTensor`` (the data
  are tensors already), ``utils.make_grid`` (images side by side) and ``utils.save_image`` (``torch.save``) stand in,
  and the examples' ``_TORCHVISION_AVAILABLE`` is set True so that their torchvision code runs.

Exit status 0 when every example ran on both and the results are equal, else 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: example file (under examples/pytorch) -> how its entry point is run
EXAMPLES = {
    "basics/backbone_image_classifier.py": "cli",
    "basics/autoencoder.py": "cli",
    "domain_templates/generative_adversarial_net.py": "gan",
}

#: the command line given to an example's cli_main(): short, on the CPU, quiet, deterministic
CLI_ARGS = [
    "--trainer.accelerator=cpu", "--trainer.max_epochs=2", "--trainer.limit_train_batches=6",
    "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", "--trainer.limit_predict_batches=1",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
    "--trainer.deterministic=true",
]  # fmt: skip

DRIVER = r'''
import contextlib, importlib, importlib.util, io, json, sys, types
import torch

path, kind, cli_args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
pl = importlib.import_module("lightning.pytorch")


class SyntheticMNIST(torch.utils.data.Dataset):
    """MNIST's shape and size, without the download (see run_examples.py)."""

    def __init__(self, root=None, train=True, download=False, transform=None, **kwargs):
        self.offset, self.size = (0, 60000) if train else (10**6, 10000)

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(self.offset + index)
        return torch.rand(1, 28, 28, generator=generator), int(torch.randint(10, (1,), generator=generator))


class SyntheticMNISTDataModule(pl.LightningDataModule):
    def __init__(self, *args, batch_size=32, **kwargs):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(SyntheticMNIST(train=True), batch_size=self.batch_size)


def make_grid(tensor, nrow=8, padding=2, **kwargs):
    return torch.cat(list(tensor), dim=-1)


torchvision = types.SimpleNamespace(
    transforms=types.SimpleNamespace(ToTensor=lambda: (lambda x: x)),
    utils=types.SimpleNamespace(make_grid=make_grid, save_image=lambda tensor, fp, **kw: torch.save(tensor, fp)),
)

spec = importlib.util.spec_from_file_location("lightning_example", path)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)  # the file as Lightning ships it
for name, value in {"MNIST": SyntheticMNIST, "MNISTDataModule": SyntheticMNISTDataModule, "torchvision": torchvision,
                    "transforms": torchvision.transforms, "save_image": torchvision.utils.save_image,
                    "_TORCHVISION_AVAILABLE": True}.items():
    setattr(example, name, value)

runs, tested = [], []
if kind == "cli":
    class RecordingCLI(example.LightningCLI):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs.append(self)
            test = self.trainer.test

            def recording_test(*args, **kwargs):  # the example does not keep what test() returns
                tested.extend(test(*args, **kwargs))
                return tested

            self.trainer.test = recording_test

    example.LightningCLI = RecordingCLI
    sys.argv = [path, *cli_args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        example.cli_main()
    (cli,) = runs
    trainer, model, printed = cli.trainer, cli.model, out.getvalue().strip().splitlines()[-1]
else:
    pl.seed_everything(1234)
    model = example.GAN()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=True)
    trainer.fit(model, example.MNISTDataModule())
    printed = ""

weights = sum(float(p.detach().double().abs().sum()) for p in model.parameters())
print(json.dumps({
    "global_step": trainer.global_step,
    "current_epoch": trainer.current_epoch,
    "callback_metrics": {k: round(float(v), 6) for k, v in sorted(trainer.callback_metrics.items())},
    "test_results": [{k: round(float(v), 6) for k, v in sorted(r.items())} for r in tested],
    "hparams": {k: v for k, v in dict(model.hparams).items() if not k.startswith("_")},
    "weights_abs_sum": round(weights, 4),
    "last_printed_line": printed,
}))
'''


#: Lightning's CLI needs jsonargparse, which .venv-oracle (pytorch-lightning and torchmetrics) does not have: installed
#: beside it, in Lightning's supported range, as run_parity.sh installs its test requirements.
ORACLE_DEPS = REPO / ".lightning-parity" / "examples-deps-oracle"


def oracle_deps(python: Path) -> Path:
    if not (ORACLE_DEPS / ".installed").exists():
        subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install", "--target",
                        str(ORACLE_DEPS), "jsonargparse[signatures]>=4.39.0,<4.46.0"], check=True)  # fmt: skip
        (ORACLE_DEPS / ".installed").touch()
    return ORACLE_DEPS


def run(python: Path, example: Path, kind: str, framework: str, src: Path) -> dict | str:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "", "LIGHTNING_PARITY_SRC": str(src)}
    env.pop("PYTHONPATH", None)
    # torchplug: the rename-only shim; Lightning: its oracle shim, which only makes `lightning.pytorch` the installed
    # pytorch_lightning (the examples import the unified package's name)
    if framework == "torchplug":
        env["PYTHONPATH"] = f"{HERE / 'shim'}:{HERE}"
    else:
        env["PYTHONPATH"] = f"{HERE / 'oracle_shim'}:{oracle_deps(python)}"
    with tempfile.TemporaryDirectory(prefix=f"example-{framework}-") as cwd:
        done = subprocess.run([str(python), "-c", DRIVER, str(example), kind, json.dumps(CLI_ARGS)], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    if done.returncode != 0:
        return f"exit status {done.returncode}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[1]).resolve()
    pythons = {"torchplug": REPO / ".venv/bin/python", "lightning": REPO / ".venv-oracle/bin/python"}
    failed = 0
    for name, kind in EXAMPLES.items():
        example = src / "examples" / "pytorch" / name
        if not example.is_file():
            print(f"{name}: not in {src}/examples/pytorch (extract the sources with examples/pytorch; README.md)")
            failed += 1
            continue
        results = {framework: run(python, example, kind, framework, src) for framework, python in pythons.items()}
        same = isinstance(results["torchplug"], dict) and results["torchplug"] == results["lightning"]
        failed += not same
        print(f"{name}: {'same' if same else 'DIFFERENT'}")
        for framework, result in results.items():
            print(f"    {framework}: {json.dumps(result, sort_keys=True)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
