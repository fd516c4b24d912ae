"""Blob store throughput through a real server, beside plain `curl` to the same server process.

    .venv/bin/python benchmarks/bench_store.py [--size-mib 256] [--backend local|s3|both]

Sets up everything itself in a temporary folder: a SoftHSM token for the server's application
key, `hsm-vault server init` / `server run` on 127.0.0.1, accounts, and for `s3` a local
`moto_server`. Then, for each backend, it moves one blob of random bytes:

- upload and download with hsm-vault's client (`hsm_vault.client.blobs`, as `store put/get`),
- upload and download with `curl -T` / `curl -o` to the same server process,

and prints MB/s (10^6 bytes per second) and the server's peak memory growth for each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3_server import S3_ENV, run_moto_server  # noqa: E402
from store_harness import BlobServer, start_blob_server  # noqa: E402

from hsm_vault.client.blobs import delete_blob, download_file, upload_file  # noqa: E402

MiB = 1024 * 1024
PIN = "bench-store-pin"
MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


@contextmanager
def softhsm_env(folder: Path) -> Iterator[dict[str, str]]:
    """A private SoftHSM token "server"; the environment a server process needs."""
    module = next((m for m in MODULES if os.path.exists(m)), None)
    if module is None:
        raise SystemExit("SoftHSM is not installed (softhsm2)")
    env = {**os.environ, "HSM_VAULT_PIN": PIN, "HSM_VAULT_SO_PIN": "so-" + PIN}
    subprocess.run(
        [str(ROOT / "softhsm" / "init-token"), str(folder), "server"],
        env=env,
        check=True,
        capture_output=True,
    )
    yield {
        "SOFTHSM2_CONF": str(folder / "softhsm2.conf"),
        "HSM_VAULT_PKCS11_MODULE": module,
        "HSM_VAULT_PIN": PIN,
    }


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(8 * MiB, remaining))
            out.write(block)
            remaining -= len(block)


def timed(server: BlobServer, action: Any) -> tuple[float, int]:
    """(seconds, peak server memory growth in bytes) of one transfer."""
    base = server.rss()
    server.reset_peak_rss()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start, server.peak_rss() - base


def curl(args: list[str]) -> None:
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"curl failed: {done.stderr}{done.stdout}")


def bench_backend(server: BlobServer, source: Path, work: Path) -> list[dict[str, Any]]:
    size = source.stat().st_size
    client = server.client("alice")
    auth = f"Authorization: Bearer {server.tokens['alice']}"
    url = f"{server.url}/v1/blobs"
    out = work / "download.bin"
    rows = []

    def row(tool: str, direction: str, seconds: float, growth: int) -> None:
        rows.append(
            {
                "tool": tool,
                "direction": direction,
                "seconds": round(seconds, 3),
                "mb_per_s": round(size / seconds / 1e6, 1),
                "server_peak_growth_mib": round(growth / MiB, 1),
            }
        )

    row("hsm-vault", "upload", *timed(server, lambda: upload_file(client, source, "bench")))
    row(
        "hsm-vault",
        "download",
        *timed(server, lambda: download_file(client, "bench", out, force=True)),
    )
    out.unlink()
    row(
        "curl",
        "upload",
        *timed(
            server,
            lambda: curl(
                [
                    "-T",
                    str(source),
                    "-H",
                    auth,
                    "-H",
                    "Content-Type: application/octet-stream",
                    "-o",
                    os.devnull,
                    f"{url}/bench-curl",
                ]
            ),
        ),
    )
    row(
        "curl",
        "download",
        *timed(server, lambda: curl(["-H", auth, "-o", str(out), f"{url}/bench-curl"])),
    )
    out.unlink()
    delete_blob(client, "bench")
    delete_blob(client, "bench-curl")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="blob size (default 256)")
    parser.add_argument("--backend", choices=("local", "s3", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    backends = ("local", "s3") if args.backend == "both" else (args.backend,)
    size = args.size_mib * MiB
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        env = {**stack.enter_context(softhsm_env(work / "softhsm")), **S3_ENV}
        os.environ["HSM_VAULT_HOME"] = str(work / "client-home")
        source = work / "source.bin"
        random_file(source, size)
        for backend in backends:
            data = work / f"server-{backend}"
            data.mkdir()
            if backend == "local":
                store = str(data / "blobs")
            else:
                endpoint = stack.enter_context(run_moto_server(work / "moto.log"))
                bucket = endpoint.new_bucket()
                store = f"s3://{bucket}/blobs?endpoint_url={endpoint.url}&region=us-east-1"
            settings = {"store": store, "max_blob_bytes": 2 * size, "quota_bytes": 4 * size}
            with start_blob_server(data, settings, env=env, users=("alice",)) as server:
                results[backend] = bench_backend(server, source, work)
    if args.json:
        print(json.dumps({"size_bytes": size, "results": results}, indent=2))
        return
    print(f"blob of {args.size_mib} MiB through hsm-vault server run on 127.0.0.1")
    print(f"{'backend':8} {'tool':10} {'direction':9} {'MB/s':>8} {'seconds':>8} {'peak +MiB':>9}")
    for backend, rows in results.items():
        for r in rows:
            print(
                f"{backend:8} {r['tool']:10} {r['direction']:9} {r['mb_per_s']:8.1f} "
                f"{r['seconds']:8.2f} {r['server_peak_growth_mib']:9.1f}"
            )


if __name__ == "__main__":
    main()
