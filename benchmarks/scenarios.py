"""The scenarios: each starts its server, runs its loads with the same load generator, and stops it.

Rules of this module:
- One invocation runs every selected scenario one after another on the same machine, so the ratios
  between rows are fair even though the machine is shared; absolute numbers are only indicative.
- A scenario that cannot run here (a peer that does not install, a gateway feature not there yet) is
  reported as skipped with its reason; only a harness bug raises.
- Every row says what limited it where we can tell: ``client_bound`` when a client process kept a core
  90% busy, and the CPU the clients and the server used (cores) so the reader can see who had the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import wire
from benchmarks.loadgen import LoadResult, LoadSpec, Ticker, latency_summary, process_tree, run_load
from benchmarks.servers import Floor, MLServer, Onnxgate, Server, Triton, Unavailable

DEMO_WIDTH = 64
SLOW_SIZES = (64, 1600, 1600, 10)  # at least 10x the demo MLP's time per row (30x its multiply-adds)
WIDE_SIZES = (64, 1024, 1024, 10)  # the dynamic batching model
BATCH_CONCURRENCY = 32
ROLES_SPLIT = {"1": "champion", "2": "challenger"}


@dataclass
class Options:
    out: Path
    duration_s: float = 10.0
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 16)
    clients: int = 0  # 0: one client process up to c=4, two above
    grpc_client: str = "h2"
    open_loop: tuple[float, ...] = (0.5, 0.8)  # fractions of the best closed-loop gRPC throughput
    profile: bool = False
    quick: bool = False

    @property
    def reference_c(self) -> int:
        """The concurrency the targets compare at: 16 when measured, else the highest."""
        return 16 if 16 in self.concurrency else max(self.concurrency)


@dataclass
class Bench:
    options: Options
    ticker_factory: Callable[[str], Ticker]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        path = self.options.out / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def skip(self, scenario: str, reason: str) -> None:
        first = reason.strip().splitlines()[0] if reason.strip() else "unknown reason"
        self.skipped.append({"scenario": scenario, "reason": first, "detail": reason.strip()[-2000:]})
        print(f"skipped {scenario}: {first}", file=sys.stderr)

    def find(self, **match: Any) -> dict[str, Any] | None:
        for row in self.rows:
            if all(row.get(k) == v for k, v in match.items()):
                return row
        return None

    def clients_for(self, concurrency: int) -> int:
        if self.options.clients:
            return max(1, min(self.options.clients, concurrency))
        return 1 if concurrency <= 4 else 2

    def load(
        self,
        scenario: str,
        server: Server,
        protocol: str,
        payload: wire.Payload,
        concurrency: int,
        variant: str = "plain",
        roles: dict[str, str] | None = None,
        rate: float | None = None,
        duration_s: float | None = None,
    ) -> dict[str, Any]:
        o = self.options
        port = server.ports["grpc" if protocol.startswith("grpc") else "http"]
        if protocol.startswith("grpc"):
            request = wire.grpc_request(payload)
        else:
            request = wire.http_request(payload, protocol == "http_binary", "127.0.0.1", port)
        clients = self.clients_for(concurrency if rate is None else 16)
        spec = LoadSpec(
            protocol=protocol,
            port=port,
            request=request,
            concurrency=concurrency,
            rate=rate,
            duration_s=duration_s or o.duration_s,
            warmup_s=o.warmup_s,
            clients=clients,
            grpc_client=o.grpc_client,
        )
        label = f"{scenario} {server.name} {protocol} " + (
            f"c={concurrency}" if rate is None else f"r={rate:.0f}/s"
        )
        result = run_load(spec, [server.pid], self.ticker_factory(label))
        row = make_row(scenario, server.name, variant, result, roles or {"1": "champion"})
        self.rows.append(row)
        return row


def make_row(
    scenario: str, server: str, variant: str, result: LoadResult, roles: dict[str, str]
) -> dict[str, Any]:
    arms = {}
    for version, summary in result.arms.items():
        arms[roles.get(version, f"v{version}" if version else "unknown")] = {"version": version, **summary}
    notes = []
    if result.client_bound:
        notes.append(f"client-bound: a client process used {result.client_max_util:.0%} of a core")
    if result.send_lag:
        notes.append(
            f"client send lag behind the schedule p50 {result.send_lag['p50_ms']} ms, p99 "
            f"{result.send_lag['p99_ms']} ms (included in the latency)"
        )
    return {
        "scenario": scenario,
        "server": server,
        "variant": variant,
        "protocol": result.protocol,
        "mode": "closed" if result.rate is None else "open",
        "concurrency": result.concurrency,
        "rate": result.rate,
        "throughput": result.throughput,
        **{k: result.latency[k] for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")},
        "server_cpu_us_per_inf": result.server_cpu_us_per_inf,
        "server_cpu_cores": result.server_cpu_cores,
        "client_cpu_cores": result.client_cpu_cores,
        "client_processes": result.clients,
        "client_bound": result.client_bound,
        "errors": result.errors,
        "arms": arms,
        "send_lag": result.send_lag,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------ repository


def write_repository(root: Path) -> dict[str, Path]:
    """The models every scenario uses, and one gateway.toml per variant; returns the configs by name."""
    import tomli_w

    from gateway.demo import build_mlp, save_model, write_demo_repository

    write_demo_repository(root)
    models = root / "models"
    save_model(build_mlp(SLOW_SIZES, 4242), models / "slow" / "1" / "model.onnx")
    wide = build_mlp(WIDE_SIZES, 2024)
    for name, batching in (("wide", None), ("wide_batched", {"max_queue_delay_us": 400})):
        save_model(wide, models / name / "1" / "model.onnx")
        config: dict[str, Any] = {"max_batch_size": 256}
        if batching is not None:
            config["dynamic_batching"] = batching
        (models / name / "config.toml").write_text(tomli_w.dumps(config))
    head = 'model_repository = "models"\n'
    configs = {
        "plain": head + '[endpoints.demo]\nchampion = { model = "demo", version = 1 }\n',
        "split": head
        + "[endpoints.demo]\n"
        + 'champion = { model = "demo", version = 1 }\n'
        + 'challenger = { model = "demo", version = 2, weight = 0.2 }\n'
        + 'shadow = { model = "demo", version = 3, sample_rate = 1.0 }\n',
        "slow_shadow": head
        + "[endpoints.demo]\n"
        + 'champion = { model = "demo", version = 1 }\n'
        + 'shadow = { model = "slow", version = 1, sample_rate = 1.0 }\n',
    }
    paths = {}
    for name, text in configs.items():
        paths[name] = root / f"{name}.toml"
        paths[name].write_text(text)
    return paths


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compute_us(path: Path, rows: int = 1, n: int = 400) -> float:
    """ONNX Runtime's time per call for `rows` rows of 64 features, in process (best of 5 rounds: the
    least disturbed by other work on a shared machine)."""
    session = _session(path)
    x = np.random.default_rng(1).standard_normal((rows, DEMO_WIDTH)).astype(np.float32)
    for _ in range(50):
        session.run(["OUTPUT0"], {"INPUT0": x})
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n // 5):
            session.run(["OUTPUT0"], {"INPUT0": x})
        rounds.append((time.perf_counter() - t) / (n // 5) * 1e6)
    return float(min(rounds))


# ------------------------------------------------------------------------------------------- scenarios


class Scenarios:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.o = bench.options
        self.root = bench.work / "repository"
        self.configs = write_repository(self.root)
        self.demo_file = self.root / "models" / "demo" / "1" / "model.onnx"
        self.payload = wire.Payload.rows("demo", DEMO_WIDTH)

    def _onnxgate(self, config: str, *args: str) -> Onnxgate:
        return Onnxgate.start(self.bench.work, self.configs[config], *args)

    # (1)
    def bare(self) -> None:
        """The limit: ONNX Runtime called in this process, one row per call, one thread."""
        from gateway.observability.latency import bucket_of

        session = _session(self.demo_file)
        x = self.payload.array().copy()
        feeds = {"INPUT0": x}
        names = ["OUTPUT0"]
        end = time.monotonic() + self.o.warmup_s
        while time.monotonic() < end:
            session.run(names, feeds)
        ticker = self.bench.ticker_factory("(1) bare onnxruntime in-process c=1")
        hist: dict[int, int] = {}
        count = 0
        cpu0, t0 = time.process_time(), time.perf_counter_ns()
        end_ns = t0 + int(self.o.duration_s * 1e9)
        now = t0
        next_tick = t0
        while now < end_ns:
            session.run(names, feeds)
            t = time.perf_counter_ns()
            b = bucket_of((t - now) // 1000)
            hist[b] = hist.get(b, 0) + 1
            count += 1
            now = t
            if now >= next_tick:
                ticker.update((now - t0) / 1e9, self.o.duration_s, count)
                next_tick = now + 200_000_000
        elapsed = (now - t0) / 1e9
        cpu = time.process_time() - cpu0
        ticker.update(self.o.duration_s, self.o.duration_s, count)
        lat = latency_summary(hist)
        self.bench.rows.append(
            {
                "scenario": "(1) bare ORT",
                "server": "onnxruntime",
                "variant": "in-process",
                "protocol": "in-process",
                "mode": "closed",
                "concurrency": 1,
                "rate": None,
                "throughput": round(count / elapsed, 1),
                **{k: lat[k] for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")},
                "server_cpu_us_per_inf": round(cpu / count * 1e6, 1),
                "server_cpu_cores": round(cpu / elapsed, 3),
                "client_cpu_cores": 0.0,
                "client_processes": 0,
                "client_bound": False,
                "errors": {},
                "arms": {},
                "notes": ["session.run in the harness process; the latency includes the Python call"],
            }
        )

    # (2)
    def grpc(self) -> None:
        with self._onnxgate("plain") as server:
            for c in self.o.concurrency:
                self.bench.load("(2) onnxgate gRPC", server, "grpc", self.payload, c)
            for c in self.o.concurrency:
                self.bench.load("(2) onnxgate gRPC", server, "grpc_stream", self.payload, c)
            best = max(
                (
                    r["throughput"]
                    for r in self.bench.rows
                    if r["scenario"] == "(2) onnxgate gRPC" and r["protocol"] == "grpc"
                ),
                default=0.0,
            )
            for fraction in self.o.open_loop if best else ():
                row = self.bench.load(
                    "(2) onnxgate gRPC",
                    server,
                    "grpc",
                    self.payload,
                    0,
                    variant="open loop",
                    rate=best * fraction,
                )
                row["notes"].append(f"open loop at {fraction:.0%} of the best closed-loop rate")
            if self.o.profile:
                self._profile(server)

    def _profile(self, server: Server) -> None:
        """py-spy on the gateway during an extra gRPC run (not a measured row: sampling costs CPU)."""
        raw = self.o.out / "profile-onnxgate-grpc.txt"
        duration = max(3, int(min(self.o.duration_s, 8)))
        cmd = [
            str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid), "--format", "raw",
            "--rate", "250", "--duration", str(duration + 1), "--nonblocking", "--output", str(raw),
        ]  # fmt: skip
        try:
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            self.bench.extras["profile"] = {"error": f"py-spy did not start: {exc}"}
            return
        spec = LoadSpec(
            "grpc",
            server.ports["grpc"],
            wire.grpc_request(self.payload),
            concurrency=self.o.reference_c,
            duration_s=duration,
            warmup_s=0.5,
            clients=self.bench.clients_for(self.o.reference_c),
            grpc_client=self.o.grpc_client,
        )
        run_load(spec, [server.pid], self.bench.ticker_factory("profiling onnxgate gRPC (py-spy)"))
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = b"py-spy did not finish"
        if not raw.exists():
            self.bench.extras["profile"] = {"error": err.decode(errors="replace")[-500:]}
            return
        self.bench.extras["profile"] = summarize_profile(raw)

    # (3)
    def http(self) -> None:
        with self._onnxgate("plain") as server:
            for protocol in ("http_binary", "http_json"):
                for c in self.o.concurrency:
                    self.bench.load("(3) onnxgate HTTP", server, protocol, self.payload, c)

    # (4)
    def split(self) -> None:
        c = self.o.reference_c
        scenario = "(4) challenger 20% + shadow 100%"
        # Its own no-shadow baseline, run just before: the p99 comparison must not span minutes of other load.
        with self._onnxgate("plain") as server:
            self.bench.load(scenario, server, "grpc", self.payload, c, variant="no shadow")
        slow = self.root / "models" / "slow" / "1" / "model.onnx"
        ratio = compute_us(slow) / compute_us(self.demo_file)
        with self._onnxgate("slow_shadow") as server:
            before = server.metrics()
            row = self.bench.load(scenario, server, "grpc", self.payload, c, variant="slow shadow")
            _shadow_counts(row, before, server.metrics())
            row["notes"].append(f"shadow model compute = {ratio:.1f}x the champion's (in-process ORT)")
            row["shadow_compute_ratio"] = round(ratio, 1)
        with self._onnxgate("split") as server:
            before = server.metrics()
            row = self.bench.load(
                scenario, server, "grpc", self.payload, c, variant="split", roles=ROLES_SPLIT
            )
            _shadow_counts(row, before, server.metrics())

    # (5)
    def batching(self) -> None:
        scenario = "(5) dynamic batching"
        c = BATCH_CONCURRENCY
        with self._onnxgate("plain") as server:
            for model, variant in (("wide", "unbatched"), ("wide_batched", "batched")):
                payload = wire.Payload.rows(model, DEMO_WIDTH)
                row = self.bench.load(scenario, server, "grpc", payload, c, variant=variant)
                sizes = server.batch_sizes(model)
                executions = sum(sizes.values())
                rows_run = sum(b * n for b, n in sizes.items())
                row["batch_sizes"] = {str(b): n for b, n in sorted(sizes.items())}
                mean = rows_run / executions if executions else 0.0
                row["mean_batch"] = round(mean, 2)
                row["notes"].append(f"model {model} {'-'.join(map(str, WIDE_SIZES))}; mean batch {mean:.2f}")

    # (6)
    def workers(self) -> None:
        scenario = "(6) 2 workers"
        c = self.o.reference_c
        with self._onnxgate("plain") as one:  # the 1-worker baseline, run just before
            self.bench.load(scenario, one, "grpc", self.payload, c, variant="1 worker")
        try:
            server = self._onnxgate("plain", "--workers", "2")
        except Unavailable as exc:
            self.bench.skip(scenario, f"the gateway did not start with --workers 2: {exc}")
            return
        with server:
            time.sleep(1.0)
            tree = process_tree(server.pid)
            if len(tree) < 3:
                self.bench.skip(
                    scenario,
                    f"--workers 2 is accepted but started {len(tree)} process(es) (a supervisor and 2 workers "
                    "expected): the multi-process mode is not there yet",
                )
                return
            for cc in sorted({c, 2 * c}):
                row = self.bench.load(scenario, server, "grpc", self.payload, cc, variant="2 workers")
                row["notes"].append(f"{len(tree)} server processes")

    # (7)
    def mlserver(self) -> None:
        scenario = "(7) MLServer 1.7.1"
        try:
            server = MLServer.start(self.bench.work, self.demo_file)
        except Unavailable as exc:
            self.bench.skip(scenario, str(exc))
            return
        with server:
            payload = self.payload
            for c in self.o.concurrency:
                self.bench.load(scenario, server, "grpc", payload, c)
            for c in self.o.concurrency:
                row = self.bench.load(scenario, server, "http_json", payload, c)
                row["notes"].append("JSON: MLServer has no binary tensor extension")

    # (8)
    def triton(self) -> None:
        scenario = "(8) Triton 2.51 (pytriton)"
        try:
            server = Triton.start(self.bench.work, self.demo_file)
        except Unavailable as exc:
            self.bench.skip(scenario, str(exc))
            return
        with server:
            for protocol in ("grpc", "http_binary", "http_json"):
                for c in self.o.concurrency:
                    row = self.bench.load(scenario, server, protocol, self.payload, c)
                    row["notes"].append("Python backend running ORT, dynamic batcher (100 us)")

    def floor(self) -> None:
        """Trivial grpc.aio and aiohttp servers answering a fixed reply: the CPU floor of the stacks."""
        c = self.o.reference_c
        for kind, protocol in (("grpc", "grpc"), ("http", "http_json")):
            try:
                server = Floor.start(self.bench.work, kind)
            except Unavailable as exc:
                self.bench.skip(f"(0) {kind} floor", str(exc))
                continue
            with server:
                for cc in sorted({1, c}):
                    row = self.bench.load(
                        "(0) floor", server, protocol, self.payload, cc, variant="trivial handler"
                    )
                    row["notes"].append("no decoding, no inference: a fixed answer from a trivial handler")

    def micro(self) -> None:
        from benchmarks.micro import run_micro

        label = self.bench.ticker_factory("micro-benchmarks (hot-path functions)")
        label.update(0, 1, 0)
        self.bench.extras["micro"] = run_micro(self.bench.work / "micro", quick=self.o.quick)
        label.update(1, 1, 0)


def _shadow_counts(row: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> None:
    counts = {}
    for key in ("queued", "dropped", "compared", "failed", "timed_out"):
        name = f"onnxgate_shadow_{key}_total"
        counts[key] = int(after.get(name, 0.0) - before.get(name, 0.0))
    row["shadow"] = counts
    row["notes"].append("shadow (run incl. warm-up): " + ", ".join(f"{k} {v}" for k, v in counts.items()))


_LINE = re.compile(r":\d+\)$")


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self-time and inclusive-time leaders of a py-spy raw (collapsed) profile."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not n_text.isdigit():
            continue
        n = int(n_text)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]  # one entry per function, not per line
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n

    def lead(d: dict[str, int], keep: Callable[[str, int], bool]) -> list[list[Any]]:
        ranked = sorted(((k, n) for k, n in d.items() if keep(k, n)), key=lambda kv: -kv[1])
        return [[name, round(100.0 * n / total, 1)] for name, n in ranked[:top]]

    def ours(
        name: str, n: int
    ) -> bool:  # the gateway's own frames, below the entry points every stack shares
        return ("gateway/" in name or "runtime/" in name) and n < 0.5 * total and "cli.py" not in name

    return {
        "samples": total,
        "file": raw.name,
        "self": lead(own, lambda _k, _n: True),
        "inclusive_gateway": lead(inclusive, ours),
    }


ORDER = ("floor", "bare", "grpc", "http", "split", "batching", "workers", "mlserver", "triton", "micro")
QUICK = ("bare", "grpc", "http")
