"""Issue 16 items 8, 9 and 13: what happens at a real terminal (a pseudo-terminal here).

The command runs in its own session whose controlling terminal is a pty, as in a shell; its
stdin and stdout are pipes or the pty, as in `hsm-vault decrypt < f.hsmv | tar t`.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsm_vault.cards import Keyring, create_card
from hsm_vault.token import open_session

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")


class Terminal:
    """A pty that a child process gets as its controlling terminal."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.name = os.ttyname(self.slave)
        self.seen = b""

    def start(self, args: list[str], env: dict[str, str], **streams: object) -> subprocess.Popen:
        name = self.name

        def take_terminal() -> None:
            os.setsid()
            os.close(os.open(name, os.O_RDWR))  # the first tty opened becomes the controlling one

        return subprocess.Popen(
            [HSM_VAULT, *args],
            env=env,
            preexec_fn=take_terminal,
            **streams,  # type: ignore[call-overload]
        )

    def wait_for(self, text: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                self.seen += os.read(self.master, 4096)
        assert text in self.seen, self.seen

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal():
    term = Terminal()
    yield term
    term.close()


def env_without_pin() -> dict[str, str]:
    env = os.environ.copy()
    env.pop("HSM_VAULT_PIN", None)
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /dev/tty and ptys")
def test_decrypt_from_a_pipe_asks_the_pin_on_the_terminal(
    token_keys, terminal: Terminal, tmp_path: Path
) -> None:
    with open_session("bob") as ts:
        key = ts.find_key("bob-p256")
        card = create_card(ts, key, "bob")
    Keyring().add(card, origin="own", key_uri=key.uri)
    data = os.urandom(100_000)
    sealed = subprocess.run(
        [HSM_VAULT, "encrypt", "--to", card.id], input=data, capture_output=True, check=True
    ).stdout
    sealed_file = tmp_path / "f.hsmv"
    sealed_file.write_bytes(sealed)
    # `decrypt < f.hsmv | ...` with no --token: the token is picked from stdin's header and
    # the keyring (bob, not alice), and the PIN is asked on the terminal.
    with sealed_file.open("rb") as stdin:
        process = terminal.start(
            ["decrypt"],
            env_without_pin(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    terminal.wait_for(b"PIN for token bob")
    terminal.type(os.environ["HSM_VAULT_PIN"].encode() + b"\n")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out == data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /dev/tty and ptys")
def test_ctrl_c_at_the_pin_prompt_ends_the_line(terminal: Terminal, tmp_path: Path) -> None:
    process = terminal.start(
        ["key", "list", "--token", "alice"],
        env_without_pin(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    terminal.wait_for(b"PIN for token alice: ")
    terminal.type(b"\x03")  # Ctrl-C
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0
    terminal.wait_for(b"PIN for token alice: \r\n", timeout=5)
    assert b"Traceback" not in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs ptys")
@pytest.mark.parametrize("command", [["encrypt", "--to", "alice", "-o", "x"], ["decrypt"]])
def test_no_input_at_a_terminal_is_refused_not_waited_for(
    command: list[str], terminal: Terminal, tmp_path: Path
) -> None:
    process = terminal.start(
        command,
        os.environ.copy(),
        stdin=terminal.slave,
        stdout=terminal.slave,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0
    assert b"no input: name a FILE, or pipe the data in" in err
    assert b"binary output" not in err
    assert not (tmp_path / "x").exists()
