from __future__ import annotations

import random
import socket

# Outgoing connections (every gloo or store client) take their local port from the kernel's ephemeral range at any
# moment, so a port found free there may be taken again before the store listens on it (EADDRINUSE). Ports are
# therefore drawn below that range, at random (not from the generators seed_everything sets: two jobs seeded alike
# would draw the same port).
_EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_BELOW_EPHEMERAL = 12000  # how many ports below the ephemeral range are drawn from
_DRAWS = 50
_random = random.Random()


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, outside the range the OS hands to outgoing connections.

    Drawn at random below the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``), so that
    neither a parallel job nor a client connection is likely to take it before the store binds it; where that
    range cannot be read, or no drawn port is free, the OS picks one (``bind`` to port 0).
    """
    low = _ephemeral_low()
    if low is not None and low > 1024 + 1000:
        start = max(1024, low - _BELOW_EPHEMERAL)
        for _ in range(_DRAWS):
            port = _random.randrange(start, low)
            if _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int | None:
    try:
        with open(_EPHEMERAL_RANGE_FILE) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
