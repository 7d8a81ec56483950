import pytest

from torchplug import MisconfigurationError
from torchplug._devices import parse_devices


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        (3, [0, 1, 2]),
        (-1, [0, 1, 2, 3]),
        ([0], [0]),
        ([1, 3], [1, 3]),
        ("3", [0, 1, 2]),
        ("1, 3", [1, 3]),
        ("-1", [0, 1, 2, 3]),
        ("auto", [0, 1, 2, 3]),
    ],
)
def test_seed_table(devices, expected):
    assert parse_devices(devices, 4, "gpu") == expected


def test_missing_index_names_what_exists():
    with pytest.raises(MisconfigurationError, match=r"requested gpu devices \[1\] but this machine has \[0\]"):
        parse_devices([1], 1, "gpu")
    with pytest.raises(MisconfigurationError, match=r"requested gpu devices \[0, 1, 2\] but this machine has \[0, 1\]"):
        parse_devices(3, 2, "gpu")


def test_cpu_takes_any_number_of_processes():
    assert parse_devices(5, None, "cpu") == [0, 1, 2, 3, 4]
    assert parse_devices("auto", None, "cpu") == [0]


@pytest.mark.parametrize("bad", [0, -2, "x", [], [1, 1], [-1], 1.5, True, None, "1,a"])
def test_bad_devices_name_the_argument(bad):
    with pytest.raises(MisconfigurationError, match="devices="):
        parse_devices(bad, 4, "gpu")


def test_no_devices_at_all():
    with pytest.raises(MisconfigurationError, match="no gpu devices"):
        parse_devices(-1, 0, "gpu")
