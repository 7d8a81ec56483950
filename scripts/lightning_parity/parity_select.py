"""pytest plugin: keep only the test functions that select_tests.py put in scope (``-p parity_select``).

The selection file is named by ``LIGHTNING_PARITY_SELECTION`` (the TSV that select_tests.py prints); an item is kept
when its node id, less any ``[parameters]``, is a line of that file with scope ``in``.
"""

import os


def _in_scope() -> set:
    with open(os.environ["LIGHTNING_PARITY_SELECTION"], encoding="utf-8") as selection:
        return {line.split("\t")[0] for line in selection if line.split("\t")[1] == "in"}


def pytest_collection_modifyitems(config, items):
    keep_ids = _in_scope()
    keep, drop = [], []
    for item in items:
        (keep if item.nodeid.split("[")[0] in keep_ids else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
