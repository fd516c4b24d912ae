"""A card for vsmartcard's vpcd reader driver: connect to its TCP port and answer it.

vpcd is configured with `DEVICENAME /dev/null:PORT`: it listens on PORT (and PORT+1 for its
second slot) and the card connects. (Its other mode, `DEVICENAME 127.0.0.1:PORT`, where vpcd
connects to the card, aborts pcscd in Debian 12's vpcd 0.8 whenever a slot has no card: it
FD_SETs an invalid socket.)

The protocol: every message is a 2-byte big-endian length and a payload. A 1-byte payload is a
control: 0x00 power off, 0x01 power on, 0x02 reset, 0x04 "send the ATR" (answered with the
ATR). Any other payload is a command APDU, answered with the response APDU.
"""

from __future__ import annotations

import logging
import socket
import time

from .applet import ATR, PivApplet

log = logging.getLogger("virtual_yubikey")

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0, 1, 2, 4


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        # vpcd writes the length and the payload in two send()s: without an immediate ACK,
        # Nagle's algorithm on its side holds the payload for our delayed ACK (40 ms per APDU)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(2, "big") + payload)


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to vpcd, retrying until `timeout` seconds pass (pcscd may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def serve(applet: PivApplet, sock: socket.socket) -> None:
    """Answer vpcd until it closes the connection."""
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        header = _recv_exact(sock, 2)
        if header is None:
            return
        size = int.from_bytes(header, "big")
        payload = _recv_exact(sock, size) if size else b""
        if payload is None:
            return
        if len(payload) == 1:
            ctrl = payload[0]
            if ctrl == CTRL_ATR:
                _send(sock, ATR)
            elif ctrl in (CTRL_ON, CTRL_OFF, CTRL_RESET):
                applet.reset()
            else:
                log.warning("unknown vpcd control %#x", ctrl)
            continue
        response = applet.process(payload)
        log.debug("> %s\n< %s", payload.hex(), response.hex())
        _send(sock, response)
