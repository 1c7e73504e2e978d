"""What a server process holds, read from /proc (Linux): fds, RSS, accepted connections."""

from __future__ import annotations

import os
from pathlib import Path


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def holds_connection_from(pid: int, client_port: int) -> bool:
    """True when process `pid` has accepted the loopback TCP connection whose client side
    is bound to `client_port` (the kernel's backlog alone does not count: the socket must
    be one of the process's open files)."""
    inodes = _socket_inodes(pid)
    return any(_port(cols[2]) == client_port and cols[9] in inodes for cols in _tcp_rows())


def accepted_connections(pid: int, server_port: int) -> int:
    """Client connections process `pid` still holds on its listening port (LISTEN excluded)."""
    inodes = _socket_inodes(pid)
    return sum(1 for cols in _tcp_rows() if _port(cols[1]) == server_port and cols[3] != "0A" and cols[9] in inodes)


def _tcp_rows():
    """The columns of every IPv4 and IPv6 TCP socket the kernel lists."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            yield row.split()


def _port(address: str) -> int:
    """The port of /proc/net/tcp's `HEXADDR:HEXPORT`."""
    return int(address.rsplit(":", 1)[1], 16)
