"""The server side of a Kubernetes exec WebSocket (channel protocols v4/v5).

Each binary message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error/status
(JSON ``metav1.Status``), 4 resize, 255 close (v5 only).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
from typing import Any

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDOUT, STDERR, ERROR = 1, 2, 3


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def choose_protocol(header: str | None) -> str | None:
    offered = [p.strip() for p in (header or "").split(",") if p.strip()]
    for p in offered:
        if p in PROTOCOLS:
            return p
    return None


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """An unmasked (server-to-client) final frame."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def exit_status(exit_code: int) -> dict[str, Any]:
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def run_session(sock: socket.socket, stdout: bytes, exit_code: int) -> None:
    """Send stdout and the final status, close politely, wait briefly for the peer's close."""
    out = b""
    if stdout:
        out += frame(bytes([STDOUT]) + stdout)
    out += frame(bytes([ERROR]) + json.dumps(exit_status(exit_code)).encode())
    out += frame(struct.pack("!H", 1000), opcode=0x8)
    sock.sendall(out)
    sock.settimeout(2.0)
    with contextlib.suppress(OSError, ValueError):
        _drain_until_close(sock)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ValueError("connection closed")
        buf += chunk
    return buf


def _drain_until_close(sock: socket.socket) -> None:
    while True:
        b0, b1 = _recv_exact(sock, 2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", _recv_exact(sock, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", _recv_exact(sock, 8))[0]
        if b1 & 0x80:
            _recv_exact(sock, 4)
        _recv_exact(sock, n)
        if b0 & 0x0F == 0x8:
            return
