"""`make bench`: meshgate against the floor, with wrk, on this machine, in one run.

1. Writes the request bodies (bench/bodies.py), a namespaces file and dev certificates
   into a scratch directory.
2. Starts the floor (bench/floor.py) and `meshgate serve --dev --namespaces-file ...` with
   default settings (per-request log line and metrics on; its log goes to a file), and the
   same command without the judging (bench/edge.py) for the "Where the time goes" table.
3. Checks that each body gets the intended answer from each (uid, allowed, patch or not).
4. Memory: drives the injecting pod at meshgate until it has answered 10,000 requests, reads
   VmRSS, then until 100,000, reads VmRSS again.
5. One warm-up pass, then several rounds; in each round every cell (body × concurrency) is
   run on both servers back to back, the order alternating from round to round. wrk: one
   thread, keep-alive, TLS, fixed concurrency. The report takes the median of the rounds.
   Each server's CPU time per request is read from /proc around every run, and `admit`
   alone is timed at the end, in a fresh process (bench/judging.py).
6. Writes bench/results.md (tables, targets with PASS/FAIL, machine, command) and
   bench/latency-vs-size.png.

    python -m bench.run [--rounds 5] [--duration 3] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO

import orjson

from bench import bodies as bodies_module
from bench.bodies import Body
from webhook import certs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA_SCRIPT = HERE / "post.lua"
HOST = "127.0.0.1"

FLOOR = "floor"
MESHGATE = "meshgate"
EDGE = "edge"  # meshgate without its judging (bench/edge.py)

MAIN_CONCURRENCY = 16
SIZING_CONCURRENCIES = (1, 16, 64)
INJECT = "inject-cni"
VALIDATE = "validate"
MAIN_BODIES = ("inject-cni", "inject-init", "skip", "deny", "validate")
SIZE_BODIES = ("inject-cni", "env-150", "env-1500", "env-15000")  # the chart, at c=1
EDGE_BODIES = ("inject-cni", "validate")  # one per endpoint, at c=16 (see bench/edge.py)

# The targets.
MUTATE_THROUGHPUT_MIN = 0.6
MUTATE_P50_MAX = 1.6
VALIDATE_THROUGHPUT_MIN = 0.7
GROWTH_MAX = 12.0  # overhead(15,000 vars) / overhead(1,500 vars) at c=1
P50_1500_MAX_MS = 10.0
RSS_DRIFT_MAX = 0.05
MEMORY_CHECKPOINTS = (10_000, 100_000)
# Beyond this much CPU taken by other processes during the run, the report warns.
BUSY_WARNING_CORES = 0.2


# ---------------------------------------------------------------------------------------
# Pure helpers: parsing and arithmetic (tested in tests/test_bench.py)


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, as printed by done() in bench/post.lua."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus HTTP statuses > 399
    server_cpu_s: float = 0.0  # CPU time the server process used during the run

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """The server's CPU time per request answered, in µs."""
        return self.server_cpu_s / self.requests * 1e6 if self.requests else 0.0


def parse_wrk(output: str) -> WrkResult:
    """The `wrk-result key=value ...` line of wrk's output."""
    for line in output.splitlines():
        if line.startswith("wrk-result "):
            fields = {}
            for item in line.split()[1:]:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"malformed wrk-result field {item!r}")
                fields[key] = int(value)
            try:
                return WrkResult(
                    requests=fields["requests"],
                    duration_s=fields["duration_us"] / 1e6,
                    p50_ms=fields["p50_us"] / 1e3,
                    p99_ms=fields["p99_us"] / 1e3,
                    mean_ms=fields["mean_us"] / 1e3,
                    errors=sum(
                        fields[k] for k in ("connect", "read", "write", "status", "timeout")
                    ),
                )
            except KeyError as err:
                raise ValueError(f"wrk-result line lacks {err.args[0]}") from None
    raise ValueError("no wrk-result line in wrk's output (is bench/post.lua in use?)")


@dataclass(frozen=True)
class Summary:
    """The median of several rounds of one server on one cell."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rounds: tuple[WrkResult, ...]
    cpu_us: float = 0.0  # server CPU time per request


def summarize(rounds: Sequence[WrkResult]) -> Summary:
    if not rounds:
        raise ValueError("no rounds to summarize")
    return Summary(
        rps=statistics.median(r.rps for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
        rounds=tuple(rounds),
        cpu_us=statistics.median(r.cpu_us for r in rounds),
    )


@dataclass(frozen=True)
class Comparison:
    """meshgate against the floor on one cell."""

    floor: Summary
    meshgate: Summary

    @property
    def throughput_ratio(self) -> float:
        return ratio(self.meshgate.rps, self.floor.rps)

    @property
    def p50_ratio(self) -> float:
        return ratio(self.meshgate.p50_ms, self.floor.p50_ms)

    @property
    def overhead_ms(self) -> float:
        """What meshgate adds to the floor's median latency."""
        return self.meshgate.p50_ms - self.floor.p50_ms

    def cpu_allowed_us(self, throughput_ratio: float) -> float:
        """meshgate's CPU time per request at which a server that is CPU-bound, as both
        are at c=16, keeps `throughput_ratio` of the floor's throughput."""
        return self.floor.cpu_us / throughput_ratio


def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.inf


def drift(before: float, after: float) -> float:
    """Relative change from `before` to `after` (0.03 = 3 % more)."""
    return ratio(after - before, before)


@dataclass(frozen=True)
class Target:
    goal: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def _throughput(what: str, c: Comparison, minimum: float) -> Target:
    return Target(
        f"{what}: throughput ≥ {minimum:g} × floor",
        f"{c.throughput_ratio:.2f} × ({c.meshgate.rps:,.0f} vs {c.floor.rps:,.0f} req/s)",
        c.throughput_ratio >= minimum,
    )


def _growth(small: Comparison, large: Comparison) -> str:
    if small.overhead_ms <= 0:
        return "no overhead measured at 1,500 vars (noise?)"
    if large.overhead_ms <= 0:
        return "no overhead measured at 15,000 vars (noise?)"
    return f"{ratio(large.overhead_ms, small.overhead_ms):.1f} ×"


def evaluate_targets(
    results: Mapping[tuple[str, int], Comparison], rss_kb: Sequence[int]
) -> list[Target]:
    """The issue's targets, judged on the medians (rss_kb: VmRSS at MEMORY_CHECKPOINTS)."""
    mutate = results[(INJECT, MAIN_CONCURRENCY)]
    validate = results[(VALIDATE, MAIN_CONCURRENCY)]
    small, large = results[("env-1500", 1)], results[("env-15000", 1)]
    change = drift(rss_kb[0], rss_kb[1])
    sizing = [results[(INJECT, c)].meshgate for c in SIZING_CONCURRENCIES]
    c16 = f"c={MAIN_CONCURRENCY}"
    return [
        _throughput(f"/mutate, injecting pod, {c16}", mutate, MUTATE_THROUGHPUT_MIN),
        Target(
            f"/mutate, injecting pod, {c16}: p50 ≤ {MUTATE_P50_MAX:g} × floor p50",
            f"{mutate.p50_ratio:.2f} × "
            f"({mutate.meshgate.p50_ms:.2f} vs {mutate.floor.p50_ms:.2f} ms)",
            mutate.p50_ratio <= MUTATE_P50_MAX,
        ),
        _throughput(f"/validate, injected pod, {c16}", validate, VALIDATE_THROUGHPUT_MIN),
        Target(
            "Large pods, c=1: (meshgate p50 − floor p50) at 15,000 vars "
            f"≤ {GROWTH_MAX:g} × the same at 1,500 vars",
            f"{large.overhead_ms:.2f} ms vs {small.overhead_ms:.2f} ms: " + _growth(small, large),
            small.overhead_ms > 0 and large.overhead_ms <= GROWTH_MAX * small.overhead_ms,
        ),
        Target(
            f"1,500-var pod, c=1: meshgate p50 < {P50_1500_MAX_MS:g} ms",
            f"{small.meshgate.p50_ms:.2f} ms",
            small.meshgate.p50_ms < P50_1500_MAX_MS,
        ),
        Target(
            f"Memory: RSS after {MEMORY_CHECKPOINTS[1]:,} requests within "
            f"{RSS_DRIFT_MAX:.0%} of RSS after {MEMORY_CHECKPOINTS[0]:,}",
            f"{rss_kb[0] / 1024:.1f} → {rss_kb[1] / 1024:.1f} MiB ({change:+.1%})",
            abs(change) <= RSS_DRIFT_MAX,
        ),
        Target(
            f"One process at c={'/'.join(map(str, SIZING_CONCURRENCIES))}: "
            "measured without errors (sizing table)",
            " / ".join(f"{s.rps:,.0f}" for s in sizing)
            + f" req/s, {sum(s.errors for s in sizing)} errors",
            all(s.errors == 0 and s.rps > 0 for s in sizing),
        ),
    ]


def metrics_total(text: str, metric: str = "meshgate_admission_requests_total") -> int:
    """The sum over all label sets of one counter in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric + "{") or line.startswith(metric + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def status_kb(status: str, key: str) -> int:
    """A `VmRSS:  1234 kB` style field of /proc/<pid>/status, in kB."""
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise ValueError(f"no {key} in process status")


def cpu_seconds(stat: str, ticks: int) -> tuple[float, float]:
    """(busy, steal) CPU seconds of all CPUs since boot, from /proc/stat's `cpu` line.
    Busy is user + nice + system time: interrupt time is left out, as much of it is the
    loopback traffic of the benchmark itself, which no process is charged for."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, fields[1:9])
            return (user + nice + system) / ticks, steal / ticks
    raise ValueError("no cpu line in /proc/stat")


def process_cpu_seconds(stat: str, ticks: int) -> float:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    fields = stat.rsplit(")", 1)[1].split()  # the fields after "pid (comm)"
    return (int(fields[11]) + int(fields[12])) / ticks


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------
# Servers and wrk


@dataclass(frozen=True)
class Cell:
    body: str
    concurrency: int


def cells() -> list[Cell]:
    """Every (body, concurrency) the report needs, once."""
    wanted = [Cell(b, MAIN_CONCURRENCY) for b in MAIN_BODIES]
    wanted += [Cell(b, 1) for b in SIZE_BODIES]
    wanted += [Cell(INJECT, c) for c in SIZING_CONCURRENCIES]
    return list(dict.fromkeys(wanted))


def cpu_plan(usable: set[int]) -> tuple[int | None, int | None]:
    """(the servers' CPU, wrk's CPU): different ones when there are two or more, so the
    scheduler cannot run the server under test and the load generator on one core in some
    runs and on two in others (which halves a run's throughput at random); none with one."""
    cpus = sorted(usable)
    return (cpus[-1], cpus[0]) if len(cpus) >= 2 else (None, None)


SERVER_CPU, LOAD_CPU = cpu_plan(os.sched_getaffinity(0))


def pinned(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn binding the child (and every thread it starts) to `cpu`."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        log_path: Path,
        client: ssl.SSLContext,
        ready_path: str,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.client = client
        self.ready_path = ready_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=self._log,
                                        preexec_fn=pinned(SERVER_CPU))  # fmt: skip

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(HOST, self.port, context=self.client, timeout=30)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if self.call("GET", self.ready_path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def status(self) -> str:
        return Path(f"/proc/{self.process.pid}/status").read_text()

    def stat(self) -> str:
        return Path(f"/proc/{self.process.pid}/stat").read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT: stop now (SIGTERM would first drain for a few seconds, see server.py).
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def run_wrk(
    wrk: str, server: Server, body: Body, path: Path, concurrency: int, seconds: int
) -> WrkResult:
    command = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        server.url(f"/{body.endpoint}"),
        "--",
        str(path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          preexec_fn=pinned(LOAD_CPU))  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def check_answers(servers: Sequence[Server], all_bodies: Sequence[Body]) -> None:
    """Each body gets the intended answer: the benchmark measures what it says it does."""
    for server in servers:
        for body in all_bodies:
            status, raw = server.call("POST", f"/{body.endpoint}", body.encode())
            if status != 200:
                raise RuntimeError(
                    f"{server.name} /{body.endpoint} {body.name}: HTTP {status}: {raw[:300]!r}"
                )
            response = orjson.loads(raw)["response"]
            problems = []
            if response.get("uid") != body.review["request"]["uid"]:
                problems.append("uid not echoed")
            if server.name in (MESHGATE, EDGE):
                if response.get("allowed") is not body.expect_allowed:
                    problems.append(f"allowed={response.get('allowed')}")
                if ("patch" in response) is not body.expect_patch:
                    problems.append("patch present" if "patch" in response else "no patch")
            elif response.get("allowed") is not True:
                problems.append("floor did not allow")
            if problems:
                raise RuntimeError(
                    f"{server.name} {body.name}: {', '.join(problems)}: {str(response)[:300]}"
                )


# ---------------------------------------------------------------------------------------
# The run


class CPUAccount:
    """How much CPU time processes other than the benchmark's own took during the run
    (other sessions, builds, tests): the noise the alternating rounds cannot remove."""

    ticks = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy, self.steal = cpu_seconds(Path("/proc/stat").read_text(), self.ticks)
        self.own = self._own_children_and_self()

    @staticmethod
    def _own_children_and_self() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # the finished wrk runs
        return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime

    def others(self, servers: Sequence[Server]) -> tuple[float, float]:
        """(cores used by other processes, cores stolen by the hypervisor), on average."""
        busy, steal = cpu_seconds(Path("/proc/stat").read_text(), self.ticks)
        elapsed = time.monotonic() - self.started
        ours = self._own_children_and_self() - self.own
        ours += sum(process_cpu_seconds(s.stat(), self.ticks) for s in servers)
        return max(0.0, busy - self.busy - ours) / elapsed, (steal - self.steal) / elapsed


@dataclass
class Report:
    results: dict[tuple[str, int], Comparison]
    bodies: dict[str, Body]
    rss_kb: list[int]  # VmRSS at each MEMORY_CHECKPOINTS entry
    served: list[int]  # requests actually served when each was read
    peak_rss_kb: int
    total_requests: int
    machine: dict[str, str]
    command: str
    rounds: int
    seconds: int
    elapsed_s: float
    other_cores: float = 0.0  # CPU taken by other processes during the run, on average
    steal_cores: float = 0.0
    judging_us: dict[str, float] = field(default_factory=dict)  # bench/judging.py
    edge: dict[str, Summary] = field(default_factory=dict)  # EDGE_BODIES at c=16


PACKAGES = ("uvicorn", "fastapi", "starlette", "orjson", "uvloop", "httptools")


def machine(packages: tuple[str, ...] = PACKAGES, *, wrk: bool = True) -> dict[str, str]:
    """The machine description for a report (also used by the soak, without wrk)."""

    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    meminfo = read("/proc/meminfo")
    mem_kb = status_kb(meminfo, "MemTotal") if "MemTotal:" in meminfo else 0
    os_name = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    description = {
        "CPU": cpu_model(read("/proc/cpuinfo")),
        "Cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "Memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "OS": f"{os_name}, Linux {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Packages": ", ".join(versions),
    }
    if wrk:
        description["CPU binding"] = (
            f"servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}"
            if SERVER_CPU is not None
            else "none (one usable CPU)"
        )
        found = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        version = (found.stdout or found.stderr or "?").splitlines()[0].split(" Copyright")[0]
        description["wrk"] = version.strip()
    description["meshgate commit"] = git.stdout.strip() or "unknown"
    return description


def _command() -> str:
    python = Path(sys.executable)
    if python.is_relative_to(ROOT):
        python = python.relative_to(ROOT)
    command = shlex.join([str(python), "-m", "bench.run", *sys.argv[1:]])
    return f"make bench (runs {command})" if "MAKELEVEL" in os.environ else command


@dataclass(frozen=True)
class Load:
    """wrk and the bodies it sends."""

    wrk: str
    bodies: Mapping[str, Body]
    paths: Mapping[str, Path]

    def drive(self, server: Server, cell: Cell, seconds: int) -> WrkResult:
        body = self.bodies[cell.body]
        before = process_cpu_seconds(server.stat(), CPUAccount.ticks)
        result = run_wrk(self.wrk, server, body, self.paths[cell.body], cell.concurrency,
                         seconds)  # fmt: skip
        used = process_cpu_seconds(server.stat(), CPUAccount.ticks) - before
        return dataclasses.replace(result, server_cpu_s=used)


def start_servers(stack: ExitStack, work: Path) -> tuple[Server, Server, Server]:
    """The floor, meshgate and meshgate without its judging (bench/edge.py) on free ports,
    ready; they stop when `stack` closes."""
    cert_dir = work / "certs"
    certs.ensure_dev_certs(cert_dir)
    client = ssl.create_default_context(cafile=str(cert_dir / certs.CA_CERT_FILE))
    namespaces = work / "namespaces.yaml"
    namespaces.write_text(bodies_module.namespaces_yaml())
    tls = ["--cert-dir", str(cert_dir), "--host", HOST]
    port = free_port()
    floor = Server(
        FLOOR,
        [sys.executable, "-m", "bench.floor", *tls, "--port", str(port)],
        port,
        work / "floor.log",
        client,
        "/",
    )
    stack.callback(floor.stop)
    serve = ["serve", "--dev", *tls, "--namespaces-file", str(namespaces), "--port"]
    servers = [floor]
    for name, program in (
        (MESHGATE, [str(Path(sys.executable).with_name("meshgate"))]),
        (EDGE, [sys.executable, "-m", "bench.edge"]),
    ):
        port = free_port()
        server = Server(name, [*program, *serve, str(port)], port, work / f"{name}.log",
                        client, "/readyz")  # fmt: skip
        stack.callback(server.stop)
        servers.append(server)
    for server in servers:
        server.wait_ready()
    floor, meshgate, edge = servers
    return floor, meshgate, edge


def serve_until(
    wrk: str, server: Server, body: Body, path: Path, total: int, rate: float
) -> tuple[int, float]:
    """Drive `body` at `server` until its metrics count `total` requests; returns the count
    reached and the last observed rate. wrk runs whole seconds, so each run aims at 90 % of
    what remains and the last one overshoots by at most a second's worth."""
    while True:
        served = metrics_total(server.call("GET", "/metrics")[1].decode())
        if served >= total:
            return served, rate
        seconds = max(1, math.floor(0.9 * (total - served) / rate)) if rate > 0 else 1
        rate = run_wrk(wrk, server, body, path, MAIN_CONCURRENCY, seconds).rps


def measure_memory(load: Load, meshgate: Server) -> tuple[list[int], list[int]]:
    """VmRSS (kB) of meshgate at each of MEMORY_CHECKPOINTS requests of the injecting pod,
    and the request counts at which it was read."""
    rss_kb, served = [], []
    rate = 0.0
    for checkpoint in MEMORY_CHECKPOINTS:
        count, rate = serve_until(
            load.wrk, meshgate, load.bodies[INJECT], load.paths[INJECT], checkpoint, rate
        )
        served.append(count)
        rss_kb.append(status_kb(meshgate.status(), "VmRSS"))
        print(f"memory: VmRSS {rss_kb[-1] / 1024:.1f} MiB after {count:,} requests", flush=True)
    return rss_kb, served


def measure_rounds(
    load: Load, floor: Server, meshgate: Server, edge: Server, args: argparse.Namespace
) -> tuple[dict[tuple[str, int], Comparison], dict[str, Summary]]:
    """A warm-up pass, then the rounds: every cell on both servers, back to back, in an
    order that alternates from round to round; after each EDGE_BODIES cell, the edge
    server on it too. Returns the comparisons and the edge server's summaries by body."""
    todo = cells()
    runs = len(todo) * 2 + len(EDGE_BODIES)
    minutes = runs * (args.warmup + args.rounds * args.duration) / 60
    print(
        f"{runs} runs per round: warm-up {args.warmup} s each, then {args.rounds} rounds "
        f"of {args.duration} s each, about {minutes:.1f} min",
        flush=True,
    )
    def servers(cell: Cell, order: tuple[Server, ...]) -> tuple[Server, ...]:
        with_edge = cell.body in EDGE_BODIES and cell.concurrency == MAIN_CONCURRENCY
        return (*order, edge) if with_edge else order

    for cell in todo:
        for server in servers(cell, (floor, meshgate)):
            load.drive(server, cell, args.warmup)
    measured: dict[tuple[Cell, str], list[WrkResult]] = {}
    for r in range(args.rounds):
        order = (floor, meshgate) if r % 2 == 0 else (meshgate, floor)
        for cell in todo:
            for server in servers(cell, order):
                result = load.drive(server, cell, args.duration)
                measured.setdefault((cell, server.name), []).append(result)
                errors = f"  {result.errors} errors" if result.errors else ""
                print(
                    f"round {r + 1}/{args.rounds} {cell.body:>11} c={cell.concurrency:<2} "
                    f"{server.name:>8}: {result.rps:8,.0f} req/s  p50 {result.p50_ms:7.2f} ms"
                    f"  p99 {result.p99_ms:7.2f} ms{errors}",
                    flush=True,
                )
    comparisons = {
        (c.body, c.concurrency): Comparison(
            summarize(measured[(c, FLOOR)]), summarize(measured[(c, MESHGATE)])
        )
        for c in todo
    }
    edges = {b: summarize(measured[(Cell(b, MAIN_CONCURRENCY), EDGE)]) for b in EDGE_BODIES}
    return comparisons, edges


def measure_judging(names: Sequence[str]) -> dict[str, float]:
    """`admit` alone on each named body, µs per call (bench/judging.py), in a fresh process
    bound to the servers' CPU: the driver's own heap, after a run, would slow it down."""
    done = subprocess.run([sys.executable, "-m", "bench.judging", *names], cwd=ROOT,
                          capture_output=True, text=True, check=False,
                          preexec_fn=pinned(SERVER_CPU))  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"bench.judging failed ({done.returncode}): {done.stderr}")
    timed: dict[str, float] = orjson.loads(done.stdout)
    return timed


def run(args: argparse.Namespace) -> Report:
    started = time.monotonic()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (make bench installs Debian's wrk)")
    all_bodies = bodies_module.all_bodies()
    cpu = CPUAccount()
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
        if args.keep_work:
            print(f"scratch directory (kept): {work}")
        else:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        paths = bodies_module.write(all_bodies, work / "bodies")
        load = Load(wrk, {b.name: b for b in all_bodies}, paths)
        floor, meshgate, edge = start_servers(stack, work)
        check_answers((floor, meshgate), all_bodies)
        check_answers((edge,), [load.bodies[name] for name in EDGE_BODIES])
        print("answers checked: every body gets the intended answer from each server")
        rss_kb, served = measure_memory(load, meshgate)
        results, edges = measure_rounds(load, floor, meshgate, edge, args)
        if meshgate.process.poll() is not None:
            raise RuntimeError(f"meshgate exited during the run:\n{meshgate.log_tail()}")
        peak = status_kb(meshgate.status(), "VmHWM")
        total = metrics_total(meshgate.call("GET", "/metrics")[1].decode())
        other_cores, steal_cores = cpu.others((floor, meshgate, edge))
    judging = measure_judging(list(dict.fromkeys((*MAIN_BODIES, *SIZE_BODIES))))
    return Report(
        results=results,
        bodies=dict(load.bodies),
        rss_kb=rss_kb,
        served=served,
        peak_rss_kb=peak,
        total_requests=total,
        machine=machine(),
        command=_command(),
        rounds=args.rounds,
        seconds=args.duration,
        elapsed_s=time.monotonic() - started,
        other_cores=other_cores,
        steal_cores=steal_cores,
        judging_us=judging,
        edge=edges,
    )


# ---------------------------------------------------------------------------------------
# The report


def _rounds(n: int) -> str:
    return f"{n} round" if n == 1 else f"{n} rounds"


def _kib(body: Body) -> str:
    return f"{len(body.encode()) / 1024:,.1f} KiB"


def _judging(report: Report, name: str) -> str:
    judged = report.judging_us.get(name)
    return f"{judged:,.0f} |" if judged is not None else "– |"


def render(report: Report) -> str:
    res = report.results
    out: list[str] = []
    add = out.append
    add("# meshgate benchmark results\n")
    add(
        f"Generated by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"in {report.elapsed_s / 60:.1f} min. Medians of {_rounds(report.rounds)} of "
        f"{report.seconds} s per server and cell; floor and meshgate alternate within each "
        "round. wrk: 1 thread, keep-alive connections, TLS, fixed concurrency (c). "
        "Latencies in ms. Ratios are meshgate's median over the floor's median "
        "(throughput: higher is better; p50: lower is better). See bench/README.md.\n"
    )
    if report.other_cores > BUSY_WARNING_CORES:
        add(
            f"**Warning: other processes used {report.other_cores:.2f} cores on average "
            "during this run** (this machine has "
            f"{os.cpu_count()}): the figures are disturbed; see the spread under "
            '"Every round" and rerun on a quiet machine before drawing conclusions.\n'
        )

    add("## Targets\n")
    add("| target | measured | verdict |\n|---|---|---|")
    for t in evaluate_targets(res, report.rss_kb):
        add(f"| {t.goal} | {t.measured} | **{t.verdict}** |")
    add("")

    add(f"## Request kinds at c={MAIN_CONCURRENCY}\n")
    add(
        "| request | body | floor req/s | meshgate req/s | throughput ratio | floor p50 | "
        "meshgate p50 | p50 ratio | floor p99 | meshgate p99 | errors |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name in MAIN_BODIES:
        c = res[(name, MAIN_CONCURRENCY)]
        b = report.bodies[name]
        add(
            f"| `{name}`: {b.description} | {_kib(b)} | {c.floor.rps:,.0f} | "
            f"{c.meshgate.rps:,.0f} | {c.throughput_ratio:.2f} | {c.floor.p50_ms:.2f} | "
            f"{c.meshgate.p50_ms:.2f} | {c.p50_ratio:.2f} | {c.floor.p99_ms:.2f} | "
            f"{c.meshgate.p99_ms:.2f} | {c.floor.errors + c.meshgate.errors} |"
        )
    add("")

    add(f"## Where the time goes (c={MAIN_CONCURRENCY})\n")
    add(
        "At this concurrency both servers are CPU-bound on one core, so throughput follows "
        "CPU time per request. *CPU* is a server's user + system time during each wrk run "
        "divided by the requests it answered (medians of the rounds). *Allowed* is the CPU "
        "time per request at which meshgate would meet its throughput target. *Without "
        "judging* is meshgate with `admit` run once per endpoint and its outcome repeated "
        "(bench/edge.py): everything meshgate does per request except the decision, the "
        "gate and the patch building. *Judging in the server* is the difference of the two "
        "(meshgate − without judging); *left for judging* is what the target leaves it "
        "(allowed − without judging). *Judging in-process* is `admit` alone, timed in a "
        "fresh process (bench/judging.py) on the same bodies, policy and namespaces (no "
        "HTTP, TLS or JSON parse; in a server, with colder CPU caches, the same code takes "
        "longer).\n"
    )
    add(
        "| request | floor CPU µs/req | meshgate CPU µs/req | allowed | without judging: "
        "CPU µs/req | without judging: throughput ratio | judging in the server µs | left for "
        "judging µs | judging in-process µs |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    targets = {INJECT: MUTATE_THROUGHPUT_MIN, VALIDATE: VALIDATE_THROUGHPUT_MIN}
    for name in MAIN_BODIES:
        c = res[(name, MAIN_CONCURRENCY)]
        allowed = c.cpu_allowed_us(targets[name]) if name in targets else None
        edge = report.edge.get(name)
        cells = [c.floor.cpu_us, c.meshgate.cpu_us, allowed, edge.cpu_us if edge else None]
        shown = [f"{v:.0f}" if v is not None else "–" for v in cells]
        shown.append(f"{ratio(edge.rps, c.floor.rps):.2f}" if edge else "–")
        shown.append(f"{c.meshgate.cpu_us - edge.cpu_us:.0f}" if edge else "–")
        shown.append(f"{allowed - edge.cpu_us:.0f}" if edge and allowed is not None else "–")
        add(f"| `{name}` | " + " | ".join(shown) + " | " + _judging(report, name))
    add("")

    add("## Pod size at c=1 (/mutate, cni namespace, injecting)\n")
    add(
        "| pod | containers | env vars | body | floor p50 | meshgate p50 | meshgate − floor | "
        "floor p99 | meshgate p99 | meshgate req/s | throughput ratio | judging µs |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name in SIZE_BODIES:
        c = res[(name, 1)]
        b = report.bodies[name]
        add(
            f"| `{name}` | {b.containers} | {b.env_vars:,} | {_kib(b)} | {c.floor.p50_ms:.2f} | "
            f"{c.meshgate.p50_ms:.2f} | {c.overhead_ms:+.2f} | {c.floor.p99_ms:.2f} | "
            f"{c.meshgate.p99_ms:.2f} | {c.meshgate.rps:,.0f} | {c.throughput_ratio:.2f} | "
            + _judging(report, name)
        )
    add(
        "\n*Judging*: `admit` alone, as in the table above: the CPU-only view of "
        "how meshgate's own work grows with the pod (the p50 differences at c=1 also carry "
        "the transport of large bodies, and swing from round to round).\n"
    )
    add(
        "Chart: [latency-vs-size.png](latency-vs-size.png) (p50 against env vars, c=1, "
        "log–log).\n"
    )

    add(f"## Sizing: one meshgate process, injecting pod (`{INJECT}`)\n")
    add("| concurrency | meshgate req/s | p50 | p99 | floor req/s | throughput ratio | errors |")
    add("|--:|--:|--:|--:|--:|--:|--:|")
    for conc in SIZING_CONCURRENCIES:
        c = res[(INJECT, conc)]
        add(
            f"| {conc} | {c.meshgate.rps:,.0f} | {c.meshgate.p50_ms:.2f} | "
            f"{c.meshgate.p99_ms:.2f} | {c.floor.rps:,.0f} | {c.throughput_ratio:.2f} | "
            f"{c.meshgate.errors} |"
        )
    add("\nOne worker per process: scale out with replicas (SPEC section 6).\n")

    add("## Memory (meshgate process)\n")
    for count, kb in zip(report.served, report.rss_kb, strict=True):
        add(f"- VmRSS after {count:,} requests of `{INJECT}`: {kb / 1024:.1f} MiB")
    add(
        f"- Peak RSS (VmHWM) at the end of the run, after {report.total_requests:,} requests "
        f"including the large pods: {report.peak_rss_kb / 1024:.1f} MiB\n"
    )

    add("## Machine\n")
    for key, value in report.machine.items():
        add(f"- {key}: {value}")
    add(
        f"- Other load during the run: {report.other_cores:.2f} cores on average used by "
        f"other processes, {report.steal_cores:.2f} cores stolen by the hypervisor"
    )
    add(f"\nCommand: `{report.command}`\n")

    add("## Every round (req/s; p50 ms)\n")
    add("| cell | server | " + " | ".join(f"round {i + 1}" for i in range(report.rounds)) + " |")
    add("|---|---|" + "--:|" * report.rounds)
    rows = [(f"`{name}` c={conc}", server, summary) for (name, conc), c in res.items()
            for server, summary in ((FLOOR, c.floor), (MESHGATE, c.meshgate))]  # fmt: skip
    rows += [(f"`{name}` c={MAIN_CONCURRENCY}", "meshgate without judging", summary)
             for name, summary in report.edge.items()]  # fmt: skip
    for cell, server, summary in rows:
        add(
            f"| {cell} | {server} | "
            + " | ".join(f"{r.rps:,.0f}; {r.p50_ms:.2f}" for r in summary.rounds)
            + " |"
        )
    add("")
    return "\n".join(out)


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(SIZE_BODIES, key=lambda n: report.bodies[n].env_vars)
    env = [report.bodies[n].env_vars for n in names]
    comparisons = [report.results[(n, 1)] for n in names]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.plot(env, [c.meshgate.p50_ms for c in comparisons], "o-", label="meshgate p50")
    ax.plot(env, [c.floor.p50_ms for c in comparisons], "s-", label="floor p50")
    # What meshgate adds; a log scale cannot show a difference lost in noise (≤ 0).
    added = [(x, c.overhead_ms) for x, c in zip(env, comparisons, strict=True)]
    shown = [(x, d) for x, d in added if d > 0]
    if shown:
        ax.plot(*zip(*shown, strict=True), "^--", label="meshgate − floor")
    small = report.results[("env-1500", 1)].overhead_ms
    if small > 0:  # the target: no faster than linear from the 1,500-variable pod on
        reference = [x for x in env if x >= 1_500]
        ax.plot(
            reference,
            [small * x / 1_500 for x in reference],
            ":",
            color="grey",
            label="linear growth from 1,500 vars",
        )
    for x, c in zip(env, comparisons, strict=True):
        ax.annotate(
            f"{c.meshgate.p50_ms:.2f}",
            (x, c.meshgate.p50_ms),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(
        "environment variables in the pod (containers: "
        + ", ".join(str(report.bodies[n].containers) for n in names)
        + ")"
    )
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"/mutate latency against pod size, c=1 (medians of {report.rounds} rounds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meshgate against the floor, with wrk.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds per warm-up run")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument("--chart", type=Path, default=HERE / "latency-vs-size.png")
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the scratch directory (bodies, certs, server logs)",
    )
    args = parser.parse_args(argv)
    report = run(args)
    args.results.write_text(render(report))
    plot(report, args.chart)
    print(f"\nwrote {args.results} and {args.chart} ({report.elapsed_s / 60:.1f} min)\n")
    for target in evaluate_targets(report.results, report.rss_kb):
        print(f"{target.verdict}  {target.goal}: {target.measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
