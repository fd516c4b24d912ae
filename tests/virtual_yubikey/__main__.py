"""Run the virtual YubiKey: `python -m tests.virtual_yubikey --state DIR --connect PORT`.

Creates the device in DIR on first use, connects to vpcd on 127.0.0.1:PORT (retrying while
pcscd starts) and answers it until vpcd closes the connection or SIGTERM comes. `--init` only
creates the state and prints the serial.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from . import state as device_state
from .applet import PivApplet
from .vpcd import connect, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.virtual_yubikey")
    parser.add_argument("--state", required=True, type=Path, help="state folder")
    parser.add_argument("--connect", type=int, metavar="PORT", help="vpcd's port on 127.0.0.1")
    parser.add_argument("--init", action="store_true", help="create the state and exit")
    parser.add_argument("--serial", type=int, help="serial number of a new device")
    parser.add_argument(
        "--management-key-algorithm",
        choices=("3des", "aes192"),
        default="3des",
        help="algorithm of the (default) management key of a new device",
    )
    parser.add_argument("--debug", action="store_true", help="log every APDU to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="virtual-yubikey %(relativeCreated)d: %(message)s",
    )
    algo = {"3des": device_state.MGM_3DES, "aes192": device_state.MGM_AES192}
    st = device_state.load_or_create(
        args.state, serial=args.serial, mgm_algorithm=algo[args.management_key_algorithm]
    )
    if args.init:
        print(st.serial)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    applet = PivApplet(args.state, st)
    if args.connect is None:
        parser.error("--connect PORT is needed")
    try:
        sock = connect("127.0.0.1", args.connect, timeout=20)
    except OSError as e:
        print(f"error: cannot connect to vpcd on 127.0.0.1:{args.connect}: {e}", file=sys.stderr)
        return 1
    with sock:
        serve(applet, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
