"""load_from_checkpoint from an http(s) address (downloaded into torch hub's cache) and OmegaConf hyperparameters."""

import functools
import http.server
import threading

import pytest
import torch

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_loader


@pytest.fixture
def served(tmp_path):
    """A real HTTP server on 127.0.0.1 for the files of ``tmp_path / "www"``: (folder, base address)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _trained(tmp_path, model):
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1, default_root_dir=tmp_path)
    trainer.fit(model, regression_loader(8, 8))
    return trainer


def test_load_from_checkpoint_at_a_url(tmp_path, served, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder, base = served
    model = BoringModel(features=4, lr=0.5)
    model.extra = torch.nn.Linear(2, 2)  # a key BoringModel does not have
    _trained(tmp_path, model).save_checkpoint(folder / "model.ckpt")

    loaded = BoringModel.load_from_checkpoint(f"{base}/model.ckpt", strict=False)
    assert loaded.lr == 0.5
    torch.testing.assert_close(loaded.layer.weight, model.layer.weight)
    assert (
        tmp_path / "torch-home" / "hub" / "checkpoints" / "model.ckpt"
    ).is_file()  # downloaded once, cached
    with pytest.raises(
        RuntimeError, match=r'Unexpected key\(s\) in state_dict: "extra.weight", "extra.bias"'
    ):
        BoringModel.load_from_checkpoint(f"{base}/model.ckpt", strict=True)
    with pytest.raises(
        MisconfigurationError, match=r"could not download the checkpoint 'http://.*/missing.ckpt'"
    ):
        BoringModel.load_from_checkpoint(f"{base}/missing.ckpt")


class _NotData:
    """An object a weights-only load refuses (a class, not tensors or plain data)."""


def test_a_url_checkpoint_holding_objects_is_refused_with_the_advice(tmp_path, served, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder, base = served
    torch.save({"state_dict": {}, "extra": _NotData()}, folder / "objects.ckpt")
    with pytest.raises(MisconfigurationError, match=r"holds objects other than tensors.*add_safe_globals"):
        BoringModel.load_from_checkpoint(f"{base}/objects.ckpt")


def test_omegaconf_hyperparameters_come_back_as_a_dictconfig(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")

    class Configured(BoringModel):
        def __init__(self, hparams):
            super().__init__()
            self.save_hyperparameters(hparams)

    conf = omegaconf.OmegaConf.create({"test_arg": 14, "mylist": [15.4, {"a": 1}]})
    trainer = _trained(tmp_path, Configured(conf))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = Configured.load_from_checkpoint(tmp_path / "model.ckpt")
    assert isinstance(loaded.hparams, omegaconf.DictConfig)
    assert loaded.hparams.test_arg == 14 and loaded.hparams.mylist[1].a == 1
