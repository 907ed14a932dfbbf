"""Run a tool inside a network namespace where only loopback is up (``unshare -n``, then ``ip link set lo up``),
so that servers and clusters started by tests and benchmarks can reach nothing beyond the machine."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys


def up_interfaces() -> list[str]:
    """Network interfaces of this process's network namespace that are up (SIOCGIFFLAGS has IFF_UP)."""
    import fcntl
    import socket
    import struct

    up = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            req = struct.pack("16sH14x", name.encode()[:15], 0)
            try:
                flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), 0x8913, req))[1]  # SIOCGIFFLAGS
            except OSError:
                continue
            if flags & 1:  # IFF_UP
                up.append(name)
    return sorted(up)


def isolated() -> bool:
    return up_interfaces() == ["lo"]


def can_isolate() -> bool:
    """Whether this machine lets us make such a namespace (the tools' tests skip where it does not)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.call(["unshare", "-n", "sh", "-c", "ip link set lo up"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0


def reexec_isolated(script: str, argv: list[str], who: str) -> int:
    """Run ``script argv --inside`` again inside a fresh network namespace with only loopback up."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        print(f"{who}: needs `unshare` and `ip` (util-linux, iproute2) to isolate the network", file=sys.stderr)
        return 77
    inner = " ".join(shlex.quote(a) for a in [sys.executable, script, *argv, "--inside"])
    return subprocess.call(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"])
