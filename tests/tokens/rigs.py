"""Test rigs: one real PKCS#11 implementation each, started in a temporary folder.

Every rig is a context manager that yields a `TokenRig`: the module to load, the environment a
subprocess needs to see the rig's token(s), the PINs, and how to add a token where the
implementation can. Services (swtpm, dbus, tpm2-abrmd, pkcsslotd) are started here, listen on
127.0.0.1 or a Unix socket in the rig's folder, are tracked by PID and stopped by PID.
Set-up facts for each implementation: docs/tokens.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")
LIBDIR = "/usr/lib/x86_64-linux-gnu"
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    f"{LIBDIR}/softhsm/libsofthsm2.so",
)
TPM2_MODULE = f"{LIBDIR}/pkcs11/libtpm2_pkcs11.so"
OPENCRYPTOKI_MODULE = f"{LIBDIR}/pkcs11/libopencryptoki.so"
P11KIT_PROXY = f"{LIBDIR}/p11-kit-proxy.so"
NSS_SOFTOKN = f"{LIBDIR}/libsoftokn3.so"

# Environment variables a rig sets; removed from the inherited environment first, so a rig's
# subprocess never sees another rig's token.
RIG_VARS = (
    "SOFTHSM2_CONF",
    "HSM_VAULT_PKCS11_MODULE",
    "HSM_VAULT_PIN",
    "TPM2_PKCS11_TCTI",
    "TPM2_PKCS11_STORE",
    "TPM2_PKCS11_LOG_LEVEL",
    "TPM2TOOLS_TCTI",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_CONFIG_HOME",
)


class RigError(RuntimeError):
    """A rig's service did not start; the message says which and why."""


@dataclass(frozen=True)
class TokenRig:
    """One PKCS#11 implementation, running, with at least one initialised token.

    `env` is the whole environment for a subprocess (hsm-vault, pkcs11-tool) that should see
    the rig's tokens, user PIN included. `prefix` goes before the command (NSS: a user namespace,
    so that p11-kit reads the rig's module config). `make_token(label)` adds a token with the
    same PINs, where the implementation can make more than one.
    """

    name: str
    module: str
    env: dict[str, str] = field(repr=False)
    labels: tuple[str, ...]
    pin: str = field(repr=False)
    so_pin: str | None = field(repr=False)
    folder: Path
    prefix: tuple[str, ...] = ()
    make_token: Callable[[str], None] | None = field(default=None, repr=False)
    officer_allows: tuple[str, ...] = ()
    """Token models an officer allows although they report CKA_LOCAL false (config file)."""

    @property
    def label(self) -> str:
        """The rig's first token, the one the conformance suite uses."""
        return self.labels[0]

    def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real `hsm-vault` CLI with the rig's environment (plus `env`)."""
        return subprocess.run(
            [*self.prefix, HSM_VAULT, *args],
            input=stdin,
            capture_output=True,
            env={**self.env, **(env or {})},
            cwd=cwd,
            timeout=timeout,
        )

    def tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run pkcs11-tool on the rig's module (PINs only ever on this test's argv)."""
        return subprocess.run(
            [*self.prefix, "pkcs11-tool", "--module", self.module, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=check,
            timeout=120,
        )


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in RIG_VARS}


def _require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise RigError(f"missing commands {', '.join(missing)}: run 'make deps' (Makefile DEBS)")


def _require_file(path: str, package: str) -> None:
    if not os.path.exists(path):
        raise RigError(f"{path} not found: install the Debian package {package} (make deps)")


def _free_port_pair() -> int:
    """A free TCP port P on 127.0.0.1 whose neighbour P+1 is free too (swtpm needs both)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RigError("no two adjacent free TCP ports on 127.0.0.1")


def _wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen | None, log: Path):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RigError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise RigError(f"{what} did not become ready in 20 s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    except OSError:
        return "(no log)"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_pid(pid: int, name: str) -> None:
    """SIGTERM one process by PID, then SIGKILL if it is still there after 5 s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid, name):
        time.sleep(0.05)
    if _alive(pid, name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int, name: str) -> bool:
    """True if `pid` is a running (not zombie) process called `name`."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields.get("Name", "").strip() == name[:15] and not fields.get("State", "").startswith(
        "Z"
    )


class _Processes:
    """Processes a rig started, stopped by PID in reverse order of starting."""

    def __init__(self) -> None:
        self._started: list[tuple[subprocess.Popen, str]] = []

    def start(self, what: str, argv: Sequence[str], log: Path, **kw) -> subprocess.Popen:
        out = log.open("ab")
        proc = subprocess.Popen(
            argv, stdout=kw.pop("stdout", out), stderr=out, start_new_session=True, **kw
        )
        out.close()
        self._started.append((proc, what))
        return proc

    def stop_all(self) -> None:
        while self._started:
            proc, _ = self._started.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _run(argv: Sequence[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RigError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return done.stdout


# --- SoftHSM2 -------------------------------------------------------------------------------


@contextlib.contextmanager
def softhsm_rig(folder: Path, labels: Sequence[str] = ("shsm-a",)) -> Iterator[TokenRig]:
    """SoftHSM2 tokens in `folder` (softhsm/init-token, the script the README documents)."""
    module = next((m for m in SOFTHSM_MODULES if os.path.exists(m)), None)
    if module is None:
        raise RigError("SoftHSM is not installed: install the Debian package softhsm2")
    pin, so_pin = "4711-rig-pin", "so-4711-rig-pin"

    def make_token(label: str) -> None:
        _run(
            [str(ROOT / "softhsm" / "init-token"), str(folder), label],
            {**_base_env(), "HSM_VAULT_PIN": pin, "HSM_VAULT_SO_PIN": so_pin},
            f"softhsm/init-token {label}",
        )

    for label in labels:
        make_token(label)
    env = {
        **_base_env(),
        "SOFTHSM2_CONF": str(folder / "softhsm2.conf"),
        "HSM_VAULT_PKCS11_MODULE": module,
        "HSM_VAULT_PIN": pin,
    }
    yield TokenRig("softhsm", module, env, tuple(labels), pin, so_pin, folder, (), make_token)


# --- tpm2-pkcs11 on swtpm ---------------------------------------------------------------------


@contextlib.contextmanager
def tpm2_rig(folder: Path, labels: Sequence[str] = ("tpm-a",)) -> Iterator[TokenRig]:
    """tpm2-pkcs11 on a software TPM: swtpm, a private dbus session, tpm2-abrmd.

    Tokens are made with C_InitToken (pkcs11-tool --init-token): such tokens do not list PSS
    in C_GetMechanismList although they sign with it (tpm2_ptool addtoken tokens list it).
    """
    _require("swtpm", "dbus-daemon", "tpm2-abrmd", "tpm2_dictionarylockout", "pkcs11-tool")
    _require_file(TPM2_MODULE, "libtpm2-pkcs11-1")
    _require_file(f"{LIBDIR}/libtss2-tcti-tabrmd.so.0", "libtss2-tcti-tabrmd0")
    for sub in ("tpm-state", "store"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    log = folder / "services.log"
    procs = _Processes()
    try:
        port = _free_port_pair()
        swtpm = procs.start(
            "swtpm",
            [
                "swtpm", "socket", "--tpm2",
                "--tpmstate", f"dir={folder / 'tpm-state'}",
                "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--flags", "not-need-init,startup-clear",
            ],
            log,
        )  # fmt: skip
        _wait_until("swtpm", lambda: _port_open(port), swtpm, log)
        bus = folder / "dbus.sock"
        dbus = procs.start(
            "dbus-daemon",
            [
                "dbus-daemon", "--session", "--nofork", "--nopidfile",
                f"--address=unix:path={bus}",
            ],
            log,
        )  # fmt: skip
        _wait_until("dbus-daemon", bus.exists, dbus, log)
        env = {
            **_base_env(),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}",
            "TPM2_PKCS11_TCTI": "tabrmd:bus_type=session",
            "TPM2TOOLS_TCTI": "tabrmd:bus_type=session",
            "TPM2_PKCS11_STORE": str(folder / "store"),
            "HSM_VAULT_PKCS11_MODULE": TPM2_MODULE,
        }
        abrmd = procs.start(
            "tpm2-abrmd",
            [
                "tpm2-abrmd", "--session", "--allow-root", "--flush-all",
                f"--tcti=swtpm:host=127.0.0.1,port={port}",
            ],
            log,
            env=env,
        )  # fmt: skip

        # Tests type wrong PINs on purpose: swtpm would lock out for 1000 s after 3.
        def lockout_relaxed() -> bool:
            return (
                subprocess.run(
                    [
                        "tpm2_dictionarylockout", "--setup-parameters",
                        "--max-tries=4294967295", "--recovery-time=0",
                        "--lockout-recovery-time=0",
                    ],
                    env=env,
                    capture_output=True,
                ).returncode
                == 0
            )  # fmt: skip

        _wait_until("tpm2-abrmd", lockout_relaxed, abrmd, log)
        pin, so_pin = "4711-rig-pin", "so-4711-rig-pin"

        def make_token(label: str) -> None:
            # pkcs11-tool takes PINs only from a terminal or argv; these are test PINs.
            tool = ["pkcs11-tool", "--module", TPM2_MODULE]
            slot = _empty_slot(_run([*tool, "--list-slots"], env, "pkcs11-tool --list-slots"))
            _run(
                [*tool, "--slot", slot, "--init-token", "--label", label, "--so-pin", so_pin],
                env,
                "C_InitToken",
            )
            _run(
                [
                    *tool, "--token-label", label, "--login", "--login-type", "so",
                    "--so-pin", so_pin, "--init-pin", "--pin", pin,
                ],
                env,
                "C_InitPIN",
            )  # fmt: skip

        for label in labels:
            make_token(label)
        env["HSM_VAULT_PIN"] = pin
        yield TokenRig("tpm2", TPM2_MODULE, env, tuple(labels), pin, so_pin, folder, (), make_token)
    finally:
        procs.stop_all()


def _empty_slot(listing: str) -> str:
    """The id of the first slot whose token is uninitialised, from `pkcs11-tool -L`."""
    slot = None
    for line in listing.splitlines():
        if line.startswith("Slot "):
            slot = line.split("(", 1)[1].split(")", 1)[0]
        elif "uninitialized" in line and slot is not None:
            return slot
    raise RigError(f"no empty slot to make a token in: {listing.strip()}")


# --- opencryptoki soft token ------------------------------------------------------------------

OCK_PIDFILE = Path("/var/run/pkcsslotd.pid")
OCK_LOCK = Path("/var/lock/opencryptoki/hsm-vault-tests.lock")
OCK_DEFAULT_SO_PIN = "87654321"  # what a never-initialised soft token accepts
OCK_LABEL = "hsmv-ock"


@contextlib.contextmanager
def opencryptoki_rig(folder: Path) -> Iterator[TokenRig]:
    """opencryptoki's soft token, which lives in system paths (/var/lib/opencryptoki/swtok).

    pkcsslotd is one per machine: started here when not running, and then stopped here by its
    PID. The token is re-initialised (C_InitToken wipes it) with label hsmv-ock and the default
    SO PIN; a soft token someone initialised with another SO PIN is left alone and the rig
    fails. A lock file keeps two test runs on this machine from sharing the token at once.
    """
    _require("pkcsslotd", "pkcs11-tool")
    _require_file(OPENCRYPTOKI_MODULE, "opencryptoki")
    if os.geteuid() != 0:
        raise RigError("the opencryptoki rig needs root (pkcsslotd, /var/lib/opencryptoki)")
    OCK_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with OCK_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started_pid = None
        try:
            running = _pkcsslotd_pid()
            if running is None:
                log = folder / "pkcsslotd.log"
                with log.open("ab") as out:
                    subprocess.run(["pkcsslotd"], stdout=out, stderr=out, check=True, timeout=30)
                _wait_until("pkcsslotd", lambda: _pkcsslotd_pid() is not None, None, log)
                started_pid = _pkcsslotd_pid()
            env = {**_base_env(), "HSM_VAULT_PKCS11_MODULE": OPENCRYPTOKI_MODULE}
            pin, so_pin = "4711pin", OCK_DEFAULT_SO_PIN  # the soft token allows 4-8 characters
            tool = ["pkcs11-tool", "--module", OPENCRYPTOKI_MODULE]
            _run(
                [*tool, "--init-token", "--label", OCK_LABEL, "--so-pin", so_pin],
                env,
                "C_InitToken on the opencryptoki soft token (is it initialised with another "
                "SO PIN? then it is not ours to wipe)",
            )
            _run(
                [
                    *tool, "--token-label", OCK_LABEL, "--login", "--login-type", "so",
                    "--so-pin", so_pin, "--init-pin", "--pin", pin,
                ],
                env,
                "C_InitPIN on the opencryptoki soft token",
            )  # fmt: skip
            env["HSM_VAULT_PIN"] = pin
            yield TokenRig(
                "opencryptoki", OPENCRYPTOKI_MODULE, env, (OCK_LABEL,), pin, so_pin, folder
            )
        finally:
            if started_pid is not None:
                _stop_pid(started_pid, "pkcsslotd")


def _pkcsslotd_pid() -> int | None:
    try:
        pid = int(OCK_PIDFILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid, "pkcsslotd") else None


# --- NSS softokn through p11-kit-proxy --------------------------------------------------------

NSS_UID = "1000"  # any non-zero id: p11-kit reads user module configs only when getuid() != 0


@contextlib.contextmanager
def nss_rig(folder: Path, label: str = "nss-a") -> Iterator[TokenRig]:
    """NSS softokn, which loads only with init arguments, so only through p11-kit-proxy.

    p11-kit 0.24 ignores user configs for root and has no environment override, so commands run
    in a user namespace (`unshare --user --map-user=1000`): getuid() is 1000 inside, and files
    stay accessible because root maps to their owner. XDG_CONFIG_HOME points p11-kit at the
    rig's pkcs11.conf ("user-config: override": only the rig's module, none of the system's).
    """
    _require("unshare", "certutil")
    _require_file(P11KIT_PROXY, "libp11-kit0")
    _require_file(NSS_SOFTOKN, "libnss3")
    pin = "4711-rig-pin"
    db = folder / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    pinfile = folder / "pin.txt"
    pinfile.write_text(pin + "\n")
    try:
        _run(["certutil", "-N", "-d", f"sql:{db}", "-f", str(pinfile)], _base_env(), "certutil -N")
    finally:
        pinfile.unlink()
    config = folder / "config"
    (config / "pkcs11" / "modules").mkdir(parents=True, exist_ok=True)
    (config / "pkcs11" / "pkcs11.conf").write_text("user-config: override\n")
    (config / "pkcs11" / "modules" / "nss-softokn.module").write_text(
        f"module: {NSS_SOFTOKN}\n"
        f"x-init-reserved: configdir='sql:{db}' dbTokenDescription='{label}' flags=''\n"
    )
    prefix = ("unshare", "--user", f"--map-user={NSS_UID}", f"--map-group={NSS_UID}")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RigError(f"cannot make a user namespace for the NSS rig: {probe.stderr.strip()}")
    env = {
        **_base_env(),
        "XDG_CONFIG_HOME": str(config),
        "HSM_VAULT_PKCS11_MODULE": P11KIT_PROXY,
        "HSM_VAULT_PIN": pin,
    }
    yield TokenRig(
        "nss", P11KIT_PROXY, env, (label,), pin, None, folder, prefix, officer_allows=("NSS 3",)
    )


RIGS: dict[str, Callable[[Path], contextlib.AbstractContextManager[TokenRig]]] = {
    "softhsm": softhsm_rig,
    "tpm2": tpm2_rig,
    "opencryptoki": opencryptoki_rig,
    "nss": nss_rig,
}
"""Every rig by name, in the order the conformance suite runs them."""
