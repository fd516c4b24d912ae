#!/usr/bin/env python3
"""Benchmark hsm-vault encrypt/decrypt against age and gpg on the same files.

    .venv/bin/python benchmarks/bench_crypt.py [--sizes 1M,64M,1G] [--repeat 5]
                                               [--batch 1000] [--separate 1000]
                                               [--workdir DIR] [--markdown FILE]

Sets up everything it needs in a temporary folder: a SoftHSM token (softhsm/init-token) with
an EC P-256 and an RSA-3072 key and their cards, an age X25519 identity, and a gpg key in a
private GNUPGHOME. Every figure is a separate process as a user runs it (`hsm-vault encrypt`,
`age`, `gpg`): wall time (the fastest of --repeat runs; the median and slowest are printed as
it goes), MB/s (10^6 bytes per second of plaintext) and the peak RSS of the process (from
wait4). Then it decrypts --batch small files in one `hsm-vault decrypt` call and compares with
--separate single-file processes.

The work folder is a new folder inside the repository, so the files live on the filesystem your
files live on; pass --workdir to choose another (--workdir /dev/shm for tmpfs). Each tool runs
once untimed first (as hyperfine's --warmup); before every timed run the page cache is synced
and the previous run's output removed (see `timed`).

Why the fastest run: on a VM that hands freed memory back to its host (virtio-balloon free page
reporting, as on the development VM), whichever process next touches that memory pays for the
host to map it again. That noise only ever adds time, to every tool alike, and swings a 1 GiB
run from 0.35 s to 2.7 s; the fastest run is the tool's own cost.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HSM_VAULT = str(BIN / "hsm-vault")  # --hsm-vault replaces it (e.g. to compare two builds)
PIN = "bench-pin-1234"
TOKEN = "bench"
MIB = 1 << 20
MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


@dataclass
class Run:
    seconds: float
    rss_kib: int


def timed(cmd: list[str], env: dict[str, str], output: Path | None = None) -> Run:
    """Run `cmd`; return its wall time and peak RSS.

    Dirty pages are written back first (os.sync), so no run pays for an earlier one's writeback;
    then the previous run's `output` is removed, so the memory it held is free and warm when the
    run starts, as when a user runs a command again.

    The RSS comes from GNU time, which forks from a small process: a child forked from this
    Python process would report this process's RSS as its own peak.
    """
    fd, name = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    report = Path(name)
    os.sync()
    if output is not None:
        output.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [GNU_TIME, "-f", "%M", "-o", str(report), *cmd],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    rss = int(report.read_text().split()[-1])
    report.unlink()
    return Run(elapsed, rss)


@dataclass
class Tool:
    name: str
    encrypt: list[str]  # with {in} and {out}
    decrypt: list[str]
    env: dict[str, str]

    def cmd(self, template: list[str], src: Path, dst: Path) -> list[str]:
        return [part.format(src=src, dst=dst) for part in template]


def setup(work: Path) -> tuple[list[Tool], dict[str, str]]:
    """Token, keys, cards, age and gpg identities: all inside `work`."""
    for program in (GNU_TIME, "age", "age-keygen", "gpg"):
        if shutil.which(program) is None:
            raise SystemExit(f"{program} is needed for the benchmark: install it first")
    # As `pip install` does for an installed package: without it an editable install run with
    # PYTHONDONTWRITEBYTECODE=1 would compile every hsm_vault module on every command.
    compileall.compile_dir(ROOT / "hsm_vault", quiet=1)
    module = next((m for m in MODULES if os.path.exists(m)), None)
    if module is None:
        raise SystemExit("SoftHSM is not installed (apt-get install softhsm2)")
    hsm = work / "softhsm"
    subprocess.run(
        [str(ROOT / "softhsm" / "init-token"), str(hsm), TOKEN],
        env={**os.environ, "HSM_VAULT_PIN": PIN},
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(hsm / "softhsm2.conf"),
        "HSM_VAULT_PKCS11_MODULE": module,
        "HSM_VAULT_PIN": PIN,
        "HSM_VAULT_HOME": str(work / "vault-home"),
    }
    os.environ.update(
        {
            k: env[k]
            for k in ("SOFTHSM2_CONF", "HSM_VAULT_PKCS11_MODULE", "HSM_VAULT_PIN", "HSM_VAULT_HOME")
        }
    )
    from hsm_vault.algorithms import KeyType
    from hsm_vault.cards import Keyring, create_card
    from hsm_vault.token import open_session

    cards = {}
    with open_session(TOKEN) as ts:
        for label, key_type in (
            ("bench-p256", KeyType.EC_P256),
            ("bench-rsa3072", KeyType.RSA_3072),
        ):
            key = ts.generate_key(label, key_type)
            card = create_card(ts, key, f"{label}@example.org")
            Keyring().add(card, origin="own", key_uri=key.uri)
            cards[label] = card

    tools = [
        Tool(
            f"hsm-vault ({label.removeprefix('bench-')})",
            [HSM_VAULT, "encrypt", "-q", "--to", card.id, "-o", "{dst}", "{src}"],
            [HSM_VAULT, "decrypt", "-q", "--token", TOKEN, "-o", "{dst}", "{src}"],
            env,
        )
        for label, card in cards.items()
    ]

    age_key = work / "age.key"
    subprocess.run(["age-keygen", "-o", str(age_key)], check=True, capture_output=True)
    public = next(
        line.split(":", 1)[1].strip()
        for line in age_key.read_text().splitlines()
        if line.startswith("# public key:")
    )
    tools.append(
        Tool(
            "age (X25519)",
            ["age", "-r", public, "-o", "{dst}", "{src}"],
            ["age", "-d", "-i", str(age_key), "-o", "{dst}", "{src}"],
            dict(os.environ),
        )
    )

    gnupg = work / "gnupg"
    gnupg.mkdir(mode=0o700)
    genv = {**os.environ, "GNUPGHOME": str(gnupg)}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "bench@example.org",
            "default",
            "default",
            "never",
        ],
        env=genv,
        check=True,
        capture_output=True,
    )
    tools.append(
        Tool(
            "gpg (public key, -z 0)",
            [
                "gpg",
                "--batch",
                "--yes",
                "-z",
                "0",
                "--trust-model",
                "always",
                "-r",
                "bench@example.org",
                "-o",
                "{dst}",
                "-e",
                "{src}",
            ],
            [
                "gpg",
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "-o",
                "{dst}",
                "-d",
                "{src}",
            ],
            genv,
        )
    )
    return tools, env


def make_input(path: Path, size: int) -> None:
    """Random bytes (incompressible), written a MiB at a time and synced to the disk."""
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, MIB)
            out.write(os.urandom(n))
            left -= n
        out.flush()
        os.fsync(out.fileno())


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on (from /proc/self/mounts), e.g. 'ext4', 'tmpfs'."""
    best, kind = "", "unknown filesystem"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def same_file(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


@dataclass
class Row:
    tool: str
    size: int
    enc: Run  # the fastest run's seconds, with the largest peak RSS of all runs
    dec: Run
    enc_median: float
    dec_median: float
    spread: str  # median and slowest runs, for the progress lines


def measure(tool: Tool, src: Path, work: Path, repeat: int) -> Row:
    sealed, plain = work / "sealed", work / "plain"
    encs, decs = [], []
    for attempt in range(repeat + 1):  # the first is the warm-up, not counted
        enc = timed(tool.cmd(tool.encrypt, src, sealed), tool.env, output=sealed)
        dec = timed(tool.cmd(tool.decrypt, sealed, plain), tool.env, output=plain)
        if attempt:
            encs.append(enc)
            decs.append(dec)
    if not same_file(src, plain):
        raise SystemExit(f"{tool.name}: decrypted output differs from the input")
    for p in (sealed, plain):
        p.unlink(missing_ok=True)

    def best(runs: list[Run]) -> Run:
        return Run(min(r.seconds for r in runs), max(r.rss_kib for r in runs))

    def spread(runs: list[Run]) -> str:
        times = [r.seconds for r in runs]
        return f"{statistics.median(times):.3f} median, {max(times):.3f} slowest"

    return Row(
        tool.name,
        src.stat().st_size,
        best(encs),
        best(decs),
        statistics.median(r.seconds for r in encs),
        statistics.median(r.seconds for r in decs),
        f"enc {spread(encs)}; dec {spread(decs)}",
    )


def batch(env: dict[str, str], work: Path, count: int, separate: int) -> tuple[float, float, int]:
    """Seconds for one batch decrypt of `count` files, and for `separate` single processes."""
    folder = work / "batch"
    folder.mkdir()
    names = []
    for i in range(count):
        path = folder / f"file{i:04d}.txt"
        path.write_bytes(os.urandom(1024))
        names.append(str(path))
    from hsm_vault.cards import Keyring

    card = Keyring().resolve("bench-p256@example.org").card
    subprocess.run([HSM_VAULT, "encrypt", "-q", "--to", card.id, *names], env=env, check=True)
    out = work / "batch-out"
    out.mkdir()
    sealed = [n + ".hsmv" for n in names]
    start = time.perf_counter()
    subprocess.run(
        [HSM_VAULT, "decrypt", "-q", "--token", TOKEN, "--out-dir", str(out), *sealed],
        env=env,
        check=True,
    )
    one_batch = time.perf_counter() - start
    assert len(list(out.iterdir())) == count
    singles = work / "single-out"
    singles.mkdir()
    start = time.perf_counter()
    for i in range(separate):
        subprocess.run(
            [
                HSM_VAULT,
                "decrypt",
                "-q",
                "--token",
                TOKEN,
                "-o",
                str(singles / f"f{i}"),
                sealed[i % count],
            ],
            env=env,
            check=True,
        )
    separate_time = time.perf_counter() - start
    return one_batch, separate_time, separate


def mbps(size: int, run: Run) -> str:
    return f"{size / run.seconds / 1e6:.0f}"


def table(rows: list[Row]) -> str:
    age = {r.size: r for r in rows if r.tool.startswith("age")}
    lines = [
        "| size | tool | encrypt s | encrypt MB/s | encrypt RSS MiB | decrypt s | decrypt MB/s "
        "| decrypt RSS MiB | encrypt vs age | decrypt vs age |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = age.get(r.size)
        enc_ratio = f"{base.enc.seconds / r.enc.seconds:.2f}x" if base else "-"
        dec_ratio = f"{base.dec.seconds / r.dec.seconds:.2f}x" if base else "-"
        lines.append(
            f"| {human(r.size)} | {r.tool} | {r.enc.seconds:.3f} | {mbps(r.size, r.enc)} "
            f"| {r.enc.rss_kib / 1024:.1f} | {r.dec.seconds:.3f} | {mbps(r.size, r.dec)} "
            f"| {r.dec.rss_kib / 1024:.1f} | {enc_ratio} | {dec_ratio} |"
        )
    return "\n".join(lines)


def marginal(rows: list[Row]) -> list[str]:
    """Throughput with start-up taken out: the extra bytes between the two largest sizes over
    the extra time they took. A figure for information; the targets use whole commands."""
    sizes = sorted({r.size for r in rows})
    if len(sizes) < 2:
        return []
    small, large = sizes[-2], sizes[-1]
    by = {(r.tool, r.size): r for r in rows}

    def rate(tool: str, pick: str) -> float | None:
        a, b = by.get((tool, small)), by.get((tool, large))
        if a is None or b is None:
            return None
        extra = getattr(b, pick).seconds - getattr(a, pick).seconds
        return (large - small) / extra / 1e6 if extra > 0 else None

    age = next((r.tool for r in rows if r.tool.startswith("age")), None)
    out = []
    for tool in dict.fromkeys(r.tool for r in rows if r.tool.startswith("hsm-vault")):
        parts = []
        for pick, word in (("enc", "encrypt"), ("dec", "decrypt")):
            mine, theirs = rate(tool, pick), rate(age, pick) if age else None
            if mine is None:
                continue
            ratio = f" ({mine / theirs:.2f}x age)" if theirs else ""
            parts.append(f"{word} {mine:.0f} MB/s{ratio}")
        if parts:
            out.append(
                f"- {tool}, {human(small)} to {human(large)} with start-up taken out: "
                + ", ".join(parts)
            )
    return out


def verdict(
    rows: list[Row], batch_result: tuple[float, float, int] | None, count: int
) -> list[str]:
    out = []
    largest = max(r.size for r in rows)
    age = next((r for r in rows if r.tool.startswith("age") and r.size == largest), None)
    for r in rows:
        if r.tool.startswith("hsm-vault") and r.size == largest and age is not None:
            enc, dec = age.enc.seconds / r.enc.seconds, age.dec.seconds / r.dec.seconds
            ok = "PASS" if enc >= 2 and dec >= 2 else "FAIL"
            out.append(
                f"- {ok}: {r.tool} on {human(largest)}: encrypt {enc:.2f}x, decrypt "
                f"{dec:.2f}x age's throughput (target 2x; from the medians "
                f"{age.enc_median / r.enc_median:.2f}x and {age.dec_median / r.dec_median:.2f}x)"
            )
    out.extend(marginal(rows))
    peak = max(
        (max(r.enc.rss_kib, r.dec.rss_kib) for r in rows if r.tool.startswith("hsm")), default=0
    )
    out.append(
        f"- {'PASS' if peak < 64 * 1024 else 'FAIL'}: hsm-vault peak RSS "
        f"{peak / 1024:.1f} MiB over all sizes (target < 64 MiB)"
    )
    if batch_result is not None:
        one, separate, n = batch_result
        per = separate / n
        projected = per * count
        ratio = projected / one
        note = "" if n == count else f" (measured {n} processes, {per * 1000:.0f} ms each, scaled)"
        out.append(
            f"- {'PASS' if ratio >= 20 else 'FAIL'}: {count} small files: one batch "
            f"{one:.2f} s vs {count} separate processes {projected:.1f} s{note}: "
            f"{ratio:.0f}x (target 20x)"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,64M,1G", help="input sizes (default 1M,64M,1G)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (fastest)")
    parser.add_argument("--batch", type=int, default=1000, help="small files for the batch")
    parser.add_argument(
        "--separate",
        type=int,
        default=None,
        help="separate processes to time (default: as many as --batch)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT,
        help="a new folder for the files goes here (default: the repository; /dev/shm for tmpfs)",
    )
    parser.add_argument("--hsm-vault", default=None, help="the hsm-vault program to measure")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    if args.hsm_vault:
        global HSM_VAULT
        HSM_VAULT = args.hsm_vault
    work = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.workdir))
    try:
        tools, env = setup(work)
        print(
            f"work folder: {work} ({filesystem_of(work)}); {os.cpu_count()} CPUs; "
            f"fastest of {args.repeat} runs after a warm-up",
            flush=True,
        )
        startup = timed([HSM_VAULT, "--version"], env)
        print(
            f"hsm-vault start-up alone (--version): {startup.seconds:.3f} s, "
            f"{startup.rss_kib / 1024:.1f} MiB",
            flush=True,
        )
        rows = []
        for size in sizes:
            src = work / f"input-{size}"
            make_input(src, size)
            for tool in tools:
                row = measure(tool, src, work, args.repeat)
                rows.append(row)
                print(
                    f"  {human(size):>8}  {tool.name:24} enc {row.enc.seconds:7.3f} s  "
                    f"dec {row.dec.seconds:7.3f} s  ({row.spread})",
                    flush=True,
                )
            src.unlink()
        batch_result = None
        if args.batch:
            separate = args.separate if args.separate is not None else args.batch
            batch_result = batch(env, work, args.batch, max(1, separate))
        report = (
            table(rows)
            + "\n\n"
            + "\n".join(verdict(rows, batch_result, args.batch))
            + f"\n- hsm-vault start-up alone (`hsm-vault --version`): {startup.seconds:.3f} s, "
            + f"{startup.rss_kib / 1024:.1f} MiB RSS"
        )
        print("\n" + report)
        if args.markdown:
            args.markdown.write_text(report + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
