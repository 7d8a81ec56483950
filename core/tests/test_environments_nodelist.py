"""SLURM's compressed node lists (``torchplug.environments._nodelist``), as ``scontrol show hostnames`` reads them."""

import pytest

from torchplug.environments import expand_nodelist, first_host


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("n1", ["n1"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("a[1-2],b3", ["a1", "a2", "b3"]),
        ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
        ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),
        ("x[001-002],y,z[7]", ["x001", "x002", "y", "z7"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("n-[1-2].cluster", ["n-1.cluster", "n-2.cluster"]),
    ],
)
def test_expand(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


def test_first_host_does_not_expand_everything():
    assert first_host("n[00001-99999]") == "n00001"


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]", ""])
def test_bad_lists_are_errors_that_quote_the_list(bad):
    with pytest.raises(ValueError, match="node list|names no host"):
        first_host(bad) if bad == "" else expand_nodelist(bad)
