"""TEST STAND-IN for NVIDIA apex, used only by torchplug-apex's CPU tests; it is not apex.

CI has no GPU and cannot install NVIDIA apex (apex.amp is CUDA-only and was removed after apex 25.04), so the tests
put this folder's parent first on ``sys.path``; ``import apex.amp`` then finds the recording stand-in in
``amp.py``. The real-apex tests (tests/test_apex_gpu.py) never use it.
"""
