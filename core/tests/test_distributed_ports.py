"""find_free_port draws ports below the kernel's ephemeral range, where client connections cannot take them."""

from __future__ import annotations

import socket

import pytest

from torchplug.distributed import _ports, find_free_port


def test_ports_are_free_and_below_the_ephemeral_range() -> None:
    low = _ports._ephemeral_low()
    if low is None:
        pytest.skip(f"{_ports._EPHEMERAL_RANGE_FILE} cannot be read here")
    ports = {find_free_port() for _ in range(20)}
    assert all(low - _ports._BELOW_EPHEMERAL <= port < low for port in ports)
    assert len(ports) > 1  # drawn at random, not one fixed port
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: binds


def test_a_port_in_use_is_not_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(_ports, "_ephemeral_low", lambda: taken + 1)
        monkeypatch.setattr(_ports, "_BELOW_EPHEMERAL", 1)  # the only port drawn is the taken one
        port = find_free_port()
    assert port != taken  # the OS picked another


def test_seeded_generators_do_not_fix_the_port() -> None:
    import random

    random.seed(0)
    first = find_free_port()
    random.seed(0)
    assert {first} != {find_free_port() for _ in range(5)}
