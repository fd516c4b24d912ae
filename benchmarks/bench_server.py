"""The server under load: requests/s, p50, p99 and errors from `wrk` keep-alive clients.

    .venv/bin/python benchmarks/bench_server.py [--db sqlite|postgres|both] [--clients 1,10,100,200]
                                                [--duration 5] [--workers N] [--soak 60]
    .venv/bin/python benchmarks/bench_server.py --replicas     # 1 vs 2 replicas, pinned to cores

Sets up everything itself in a temporary folder: SoftHSM tokens (the server's application key
and a user's card key), `hsm-vault server init --auto-approve` on SQLite or on a private
PostgreSQL cluster (tests/postgres_fixture.py), one account with an approved card, and
`hsm-vault server run --workers N` on 127.0.0.1. For each database it runs `wrk` (Debian's
HTTP load generator, one connection per client, keep-alive) against:

- floor:     `GET /healthz`, a static route of the same app (the framework's own cost);
- app:       `GET /v1/app`, no database, no authentication;
- card find: `GET /v1/cards?identity=...` with an API token (auth + card search);
- blob put+get: `PUT /v1/blobs/NAME?replace=true` of 0.5-4 KiB, then `GET` of another name;
  every downloaded body is compared byte for byte with what was uploaded under that name
  (the name is written into the blob), and round trips/s = requests/s / 2.

`--soak S` adds blob put+get at 200 clients for S seconds and reports errors and mismatches.
Figures depend on the machine's load: run when `uptime` is low, twice, and compare.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

HSM_VAULT = str(Path(sys.executable).with_name("hsm-vault"))
PIN = "bench-server-pin"
MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
BLOB_NAMES = 400

# wrk scripts. `done` prints one JSON line the benchmark parses.
DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (t:get("mismatches") or 0) end
  io.write(string.format(
    'WRK {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "errors": %d, ' ..
    '"status_errors": %d, "mismatches": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, e.connect + e.read + e.write + e.timeout + e.status,
    e.status, bad))
end
threads = {}
function setup(thread) table.insert(threads, thread) end
"""
GET_SCRIPT = """
wrk.method = "GET"
wrk.path = "{path}"
{auth}
"""
BLOB_SCRIPT = """
local names = {names}
function content(name)
  -- the name, a newline, then a pattern of the name's own length (0.5-4 KiB in all)
  local size = 512 + (tonumber(string.sub(name, 2)) * 977) % 3585
  local unit = name .. "|"
  return string.sub(name .. "\\n" .. string.rep(unit, math.ceil(size / #unit)), 1, size)
end
local bodies = {{}}
for i = 1, names do bodies[i] = content(string.format("b%04d", i)) end
local n = 0
mismatches = 0
function request()
  n = n + 1
  local i = (math.floor(n / 2) * 7919) % names + 1
  local name = string.format("b%04d", i)
  local headers = {{["Authorization"] = "Bearer {token}"}}
  if n % 2 == 1 then
    headers["Content-Type"] = "application/octet-stream"
    return wrk.format("PUT", "/v1/blobs/" .. name .. "?replace=true", headers, bodies[i])
  end
  return wrk.format("GET", "/v1/blobs/" .. name, headers)
end
function response(status, headers, body)
  if status == 200 then
    local name = string.match(body, "^(b%d%d%d%d)\\n")
    if name == nil or body ~= content(name) then mismatches = mismatches + 1 end
  end
end
"""


def blob_content(name: str) -> bytes:
    """The same bytes BLOB_SCRIPT's `content` makes (for the initial upload)."""
    size = 512 + (int(name[1:]) * 977) % 3585
    unit = name + "|"
    return (name + "\n" + unit * (size // len(unit) + 1)).encode()[:size]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    token: str
    identity: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hsm(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [HSM_VAULT, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"hsm-vault {' '.join(args)} failed: {done.stderr}{done.stdout}")
    return done.stdout


@contextmanager
def softhsm(folder: Path) -> Iterator[dict[str, str]]:
    """Private SoftHSM tokens "server" and "user"; sets the environment for this process too."""
    module = next((m for m in MODULES if os.path.exists(m)), None)
    if module is None:
        raise SystemExit("SoftHSM is not installed (softhsm2)")
    env = {**os.environ, "HSM_VAULT_PIN": PIN, "HSM_VAULT_SO_PIN": "so-" + PIN}
    for label in ("server", "user"):
        subprocess.run(
            [str(ROOT / "softhsm" / "init-token"), str(folder), label],
            env=env,
            check=True,
            capture_output=True,
        )
    extra = {
        "SOFTHSM2_CONF": str(folder / "softhsm2.conf"),
        "HSM_VAULT_PKCS11_MODULE": module,
        "HSM_VAULT_PIN": PIN,
        "HSM_VAULT_HOME": str(folder / "home"),
    }
    os.environ.update(extra)
    yield {**os.environ, **extra}


def init_server(data: Path, env: dict[str, str], database_url: str | None) -> tuple[str, str]:
    """`server init` + an account with an approved card; (API token, identity)."""
    args = ["server", "init", "--data", str(data), "--auto-approve", "--json"]
    args += ["--auth-address-failures", "1000000"]
    if database_url:
        args += ["--database-url", database_url]
    hsm(args, env)
    code = json.loads(hsm(["server", "add-user", "alice", "--data", str(data), "--json"], env))
    return code["enrolment_code"], "alice"


def run_server(
    data: Path, env: dict[str, str], workers: int, cpus: str | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    command = [HSM_VAULT, "server", "run", "--data", str(data), "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    log = open(data / f"server-{port}.log", "wb")  # noqa: SIM115 - the process writes it
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {(data / f'server-{port}.log').read_text()}")
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return url, process
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the server did not start within 60 s")
        time.sleep(0.2)


def prepare_account(url: str, code: str, name: str) -> str:
    """Enrol, publish a card made on the "user" token (auto-approved), upload the blobs."""
    from hsm_vault.algorithms import KeyType
    from hsm_vault.cards import create_card
    from hsm_vault.token import open_session

    token = requests.post(
        url + "/v1/enrol", json={"username": name, "code": code}, timeout=30
    ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    with open_session("user") as ts:
        label = f"card-{time.time_ns()}"
        ts.generate_key(label, KeyType.EC_P256)
        card = create_card(ts, ts.find_key(label), name)
    answer = requests.post(
        url + "/v1/cards", json={"card": card.to_text()}, headers=headers, timeout=30
    )
    answer.raise_for_status()
    with requests.Session() as session:
        for i in range(1, BLOB_NAMES + 1):
            blob = f"b{i:04d}"
            session.put(
                f"{url}/v1/blobs/{blob}?replace=true",
                data=blob_content(blob),
                headers={**headers, "Content-Type": "application/octet-stream"},
                timeout=30,
            ).raise_for_status()
    return str(token)


def wrk(url: str, script: str, clients: int, seconds: float, work: Path) -> dict[str, Any]:
    path = work / "script.lua"
    path.write_text(script)
    duration = f"-d{max(1, round(seconds))}s"
    done = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", duration, "--timeout", "10s", "-s", str(path), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRK "):
            result: dict[str, Any] = json.loads(line[4:])
            result["rps"] = result["requests"] / result["seconds"]
            return result
    raise RuntimeError(f"wrk failed: {done.stderr}{done.stdout}")


def scripts(token: str, identity: str) -> dict[str, str]:
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"'
    return {
        "floor": GET_SCRIPT.format(path="/healthz", auth="") + DONE,
        "app": GET_SCRIPT.format(path="/v1/app", auth="") + DONE,
        "card find": GET_SCRIPT.format(path=f"/v1/cards?identity={identity}", auth=auth) + DONE,
        "blob put+get": BLOB_SCRIPT.format(names=BLOB_NAMES, token=token) + DONE,
    }


def measure(
    kind: str, url: str, token: str, identity: str, clients: list[int], seconds: float, work: Path
) -> list[dict[str, Any]]:
    rows = []
    for workload, script in scripts(token, identity).items():
        wrk(url, script, 10, 1, work)  # warm-up: connections, caches, the JIT of the pools
        levels = sorted(set(clients) | ({50} if workload == "blob put+get" else set()))
        for count in levels:
            result = wrk(url, script, count, seconds, work)
            result.update(db=kind, workload=workload, clients=count)
            if workload == "blob put+get":
                result["round_trips"] = result["rps"] / 2
            rows.append(result)
            print(format_row(result), flush=True)
    return rows


def format_row(r: dict[str, Any]) -> str:
    extra = f"  {r['round_trips']:7.0f} round trips/s" if "round_trips" in r else ""
    bad = f"  mismatches {r['mismatches']}" if r.get("mismatches") else ""
    return (
        f"{r.get('db', ''):9} {r['workload']:13} {r['clients']:4d} clients "
        f"{r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
        f"errors {r['errors']}{extra}{bad}"
    )


@contextmanager
def database(kind: str, stack: ExitStack) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
        return
    from postgres_fixture import _bin_dir, start_cluster

    cluster = start_cluster(_bin_dir())
    try:
        # The default of 100 connections: replicas x workers x worker_threads must fit.
        yield cluster.create_database()
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


def bench_replicas(env: dict[str, str], work: Path, seconds: float) -> None:
    """Card find at 100 clients: one replica on core 0 against two on cores 0 and 1."""
    data = work / "replicas"
    code, identity = init_server(data, env, None)
    url_a, proc_a = run_server(data, env, 1, cpus="0")
    procs = [proc_a]
    try:
        token = prepare_account(url_a, code, identity)
        script = scripts(token, identity)["card find"]
        wrk(url_a, script, 10, 1, work)
        one = wrk(url_a, script, 100, seconds, work)
        url_b, proc_b = run_server(data, env, 1, cpus="1")
        procs.append(proc_b)
        wrk(url_b, script, 10, 1, work)
        both = run_parallel([(url_a, 50), (url_b, 50)], script, seconds, work)
        total = sum(r["rps"] for r in both)
        print(f"one replica (core 0), 100 clients:        {one['rps']:8.0f} req/s")
        print(
            f"two replicas (cores 0, 1), 2 x 50 clients: {total:8.0f} req/s "
            f"= {total / one['rps']:.2f}x  (errors {sum(r['errors'] for r in both)})"
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=20)


def run_parallel(
    targets: list[tuple[str, int]], script: str, seconds: float, work: Path
) -> list[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    folders = []
    for i in range(len(targets)):
        folder = work / f"wrk-{i}"
        folder.mkdir(exist_ok=True)
        folders.append(folder)
    with ThreadPoolExecutor(len(targets)) as pool:
        futures = [
            pool.submit(wrk, url, script, clients, seconds, folder)
            for (url, clients), folder in zip(targets, folders, strict=True)
        ]
        return [f.result() for f in futures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clients", default="1,10,100,200")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per figure")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--soak", type=float, default=0, help="200 clients of put+get, seconds")
    parser.add_argument("--replicas", action="store_true", help="1 vs 2 pinned replicas only")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    clients = [int(c) for c in args.clients.split(",")]
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"server run --workers {args.workers}; wrk -t1, {args.duration:g} s per figure",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        env = stack.enter_context(softhsm(work / "softhsm"))
        if args.replicas:
            bench_replicas(env, work, args.duration)
            return
        kinds = ("sqlite", "postgres") if args.db == "both" else (args.db,)
        for kind in kinds:
            with database(kind, stack) as url:
                data = work / f"server-{kind}"
                code, identity = init_server(data, env, url)
                server_url, process = run_server(data, env, args.workers)
                try:
                    token = prepare_account(server_url, code, identity)
                    rows += measure(kind, server_url, token, identity, clients, args.duration, work)
                    if args.soak:
                        script = scripts(token, identity)["blob put+get"]
                        soak = wrk(server_url, script, 200, args.soak, work)
                        soak.update(db=kind, workload="soak put+get", clients=200)
                        soak["round_trips"] = soak["rps"] / 2
                        rows.append(soak)
                        print(format_row(soak), flush=True)
                finally:
                    process.terminate()
                    process.wait(timeout=30)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
