"""Make torch claim ``FAKE_GPUS`` CUDA devices on a machine without one: a diagnostic, never used by the tests.

Put this folder on ``PYTHONPATH`` and set ``FAKE_GPUS=N``; every Python process (subprocesses included) then
sees ``torch.cuda.is_available() is True`` and ``torch.cuda.device_count() == N``. Nothing else is faked: the first
real CUDA call (a tensor moved to ``cuda:0``, ``torch.cuda.set_device``) fails as it would with a broken driver.

It finds the tests that would select the GPU on a machine that has one because they do not say
``accelerator="cpu"``, and the ones that build CPU-only objects or match CPU-only text. See docs/benchmarks.md,
"A GPU machine, played on the CPU".
"""

import os

_COUNT = int(os.environ.get("FAKE_GPUS", "0") or 0)

if _COUNT > 0:
    import importlib.abc
    import sys

    def _patch(torch):
        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: _COUNT
        torch.backends.cuda.is_built = lambda: True

    class _AfterTorch(importlib.abc.MetaPathFinder):
        """Patch ``torch.cuda`` once ``torch`` has finished importing (torch is not imported here eagerly)."""

        def find_spec(self, name, path=None, target=None):
            if name != "torch":
                return None
            sys.meta_path.remove(self)
            import importlib.util

            spec = importlib.util.find_spec("torch")
            loader = spec.loader
            exec_module = loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _AfterTorch())
