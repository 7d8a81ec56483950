"""The reference run: ``lightning.pytorch`` and ``lightning.fabric`` are the installed ``pytorch_lightning`` and
``lightning_fabric`` (pytorch-lightning 2.6.6's standalone packages), aliased module by module, so that Lightning's
tests, written for the unified ``lightning`` package, run unchanged on it. Lightning's own CI runs them on the
standalone package the same way, by renaming the imports."""

import importlib
import importlib.abc
import importlib.util
import sys

_RENAMES = {"lightning.pytorch": "pytorch_lightning", "lightning.fabric": "lightning_fabric"}


def _target(name: str):
    for unified, standalone in _RENAMES.items():
        if name == unified or name.startswith(unified + "."):
            return standalone + name[len(unified):]
    return None


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = importlib.import_module(_target(spec.name))
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.real_spec  # importlib stamped the alias's spec on it: give the real one back


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        real = _target(fullname)
        if real is None or importlib.util.find_spec(real) is None:
            return None
        module = importlib.import_module(real)
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(), is_package=hasattr(module, "__path__")
        )


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
