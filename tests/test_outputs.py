"""Issue 16 item 5: a client killed mid-decrypt leaves no plaintext on disk under any name."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsm_vault.cards import Keyring, create_card
from hsm_vault.outputs import PART_SUFFIX, _named_output, sweep_stale_parts
from hsm_vault.token import open_session

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")


def open_fds_under(pid: int, folder: Path) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_TMPFILE is Linux only")
def test_a_killed_decrypt_leaves_nothing_in_the_folder(token_keys, tmp_path: Path) -> None:
    with open_session("bob") as ts:
        key = ts.find_key("bob-p256")
        card = create_card(ts, key, "bob")
    Keyring().add(card, origin="own", key_uri=key.uri)
    sealed = subprocess.run(
        [HSM_VAULT, "encrypt", "--to", card.id],
        input=os.urandom(3 << 20),
        capture_output=True,
        check=True,
    ).stdout
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = subprocess.Popen(
        [HSM_VAULT, "decrypt", "--token", "bob", "-o", str(out_dir / "plain.bin")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(sealed[: len(sealed) // 2])  # header and verified chunks
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while not open_fds_under(process.pid, out_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds_under(process.pid, out_dir), "decrypt never opened its output"
        assert os.listdir(out_dir) == []  # writing, yet nothing has a name
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdin.close()
    assert os.listdir(out_dir) == []


def test_stale_part_files_of_a_dead_writer_are_swept(tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    old = time.time() - 3600
    stale = tmp_path / f".a.bin.1234{PART_SUFFIX}"
    live = tmp_path / f".b.bin.5678{PART_SUFFIX}"
    foreign = tmp_path / ".c.bin.part"
    for path in (stale, live, foreign):
        path.write_bytes(b"plaintext")
        os.utime(path, (old, old))
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # its writer is still running
        with _named_output(tmp_path / "d.bin", tmp_path, 0o600, replace=False) as out:
            out.write(b"done")
        assert not stale.exists()
        assert live.exists() and foreign.exists()
        assert (tmp_path / "d.bin").read_bytes() == b"done"
        assert sweep_stale_parts(tmp_path) == 0
    finally:
        os.close(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, "d.bin"])
