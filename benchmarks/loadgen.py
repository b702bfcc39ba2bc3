"""The load generator: client processes that send pre-built requests and histogram the answers.

Rules of this module:
- Loopback only: a spec whose host is not 127.0.0.1 / localhost / ::1 is refused before anything starts.
- Bounded: every run stops at its deadline (warm-up + duration) and after at most ``max_requests`` sends;
  a request still unanswered ``timeout_s`` after the deadline is abandoned and counted as TIMEOUT.
- Cheap per call, because the clients share the two cores with the server: requests are bytes built once
  (see ``wire``), gRPC uses identity serialisers, HTTP/1.1 is a tiny asyncio protocol over keep-alive
  connections, and answers are only scanned for their model_version (the arm) and, on streams, their id.
- Closed loop: ``concurrency`` outstanding requests, each sent when the previous one is answered. Open
  loop: requests at ``rate`` per second on a fixed schedule, latency counted from the *intended* send time,
  so a server that falls behind is charged for the queueing it causes (no coordinated omission).
- Latencies go into the gateway's own HDR buckets (``gateway.observability.latency``), per answered
  model_version, so the parent merges histograms, never samples.
- Client processes start together on a shared CLOCK_MONOTONIC instant; the parent samples the server's CPU
  (the process and all its descendants, from /proc) exactly over the measured window.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import wire
from gateway.observability.latency import bucket_of, merge, quantiles

LOOPBACK = ("127.0.0.1", "localhost", "::1")
QUANTILES = (0.5, 0.9, 0.99, 0.999)
# A client process that keeps a core this busy is itself a bottleneck.
CLIENT_BOUND_UTIL = 0.9
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    protocol: str  # one of wire.PROTOCOLS
    port: int
    request: bytes  # serialised ModelInferRequest (gRPC) or the complete HTTP request
    concurrency: int = 1  # closed loop: requests outstanding, over all client processes
    rate: float | None = None  # open loop: requests per second over all processes (concurrency ignored)
    duration_s: float = 10.0
    warmup_s: float = 1.0
    max_requests: int = 5_000_000
    clients: int = 1  # client processes
    connections: int = 0  # gRPC channels per process (0: min(4, its concurrency)); HTTP: one per request
    host: str = "127.0.0.1"
    timeout_s: float = 10.0
    max_in_flight: int = 2048  # open loop, per process: beyond it a send is skipped and counted NOT_SENT
    grpc_client: str = "h2"  # "h2": benchmarks.h2grpc (cheap); "aio": grpcio's asyncio client

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK:
            raise ValueError(f"the load generator only targets loopback addresses, not {self.host!r}")
        if self.protocol not in wire.PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; one of {wire.PROTOCOLS}")
        if self.rate is None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.grpc_client not in ("h2", "aio"):
            raise ValueError("grpc_client is 'h2' or 'aio'")
        if self.duration_s <= 0 or self.max_requests < 1:
            raise ValueError("a run needs a positive duration and request budget")


def latency_summary(hist: dict[int, int]) -> dict[str, float | int | None]:
    count, qs, top = quantiles(hist, QUANTILES)
    ms = [round(q / 1000.0, 3) if q is not None else None for q in qs]
    return {
        "count": count,
        "p50_ms": ms[0],
        "p90_ms": ms[1],
        "p99_ms": ms[2],
        "p999_ms": ms[3],
        "max_ms": round(top / 1000.0, 3) if top is not None else None,
    }


@dataclass(slots=True)
class LoadResult:
    protocol: str
    concurrency: int
    rate: float | None
    clients: int
    window_s: float
    ok: int
    throughput: float  # answered without error, per second of the measured window
    latency: dict[str, Any]  # all arms together
    arms: dict[str, dict[str, Any]]  # model_version -> latency summary and share
    errors: dict[str, int]
    client_cpu_cores: float  # CPU seconds of all client processes per second of window
    client_max_util: float  # the busiest client process, as a fraction of one core
    client_bound: bool
    server_cpu_s: float | None = None
    server_cpu_us_per_inf: float | None = None
    server_cpu_cores: float | None = None
    send_lag: dict[str, Any] | None = None  # open loop: client lateness vs the schedule (in the latency)
    histogram: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if k != "histogram"}


# --------------------------------------------------------------------------------------------- server CPU


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return 0.0
    fields = text[text.rfind(b")") + 2 :].split()
    # fields[11], [12]: utime, stime (the 14th and 15th of the whole line)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the given processes and all their descendants, now."""
    total, seen = 0.0, set()
    for root in pids:
        for p in process_tree(root):
            if p not in seen:
                seen.add(p)
                total += _cpu_of(p)
    return total


# ----------------------------------------------------------------------------------------- client side


class _Recorder:
    """Per-process counts: HDR histograms per answered version, errors by code."""

    def __init__(self, measure_from: int, measure_to: int) -> None:
        self.measure_from, self.measure_to = measure_from, measure_to
        self.arms: dict[bytes, dict[int, int]] = {}
        self.errors: dict[str, int] = {}
        self.ok_in_window = 0
        self.done = 0  # everything answered, for the progress bar
        self.lag: dict[int, int] = {}  # open loop: how late the client sent, vs the schedule (HDR buckets)

    def ok(self, intended_ns: int, version: bytes) -> None:
        now = time.monotonic_ns()
        self.done += 1
        if intended_ns < self.measure_from or intended_ns >= self.measure_to:
            return
        if now < self.measure_to:
            self.ok_in_window += 1
        h = self.arms.get(version)
        if h is None:
            h = self.arms[version] = {}
        b = bucket_of((now - intended_ns) // 1000)
        h[b] = h.get(b, 0) + 1

    def error(self, intended_ns: int, code: str) -> None:
        self.done += 1
        if self.measure_from <= intended_ns < self.measure_to:
            self.errors[code] = self.errors.get(code, 0) + 1


def _grpc_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            return str(code().name)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


class _HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time (Content-Length or chunked answers)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.head_end = -1
        self.need = -1
        self.chunked = False
        self.status = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while self.waiter is not None:
            if self.head_end < 0:
                k = buf.find(b"\r\n\r\n")
                if k < 0:
                    return
                head = bytes(buf[:k]).lower()
                self.status = int(head[9:12])
                self.head_end = k + 4
                j = head.find(b"\r\ncontent-length:")
                if j >= 0:
                    end = head.find(b"\r\n", j + 2)
                    self.need = self.head_end + int(head[j + 17 : end if end > 0 else None])
                    self.chunked = False
                else:
                    self.chunked = b"chunked" in head
                    self.need = -1 if self.chunked else self.head_end
            if self.chunked:
                k = buf.find(b"\r\n0\r\n\r\n", self.head_end - 2)
                if k < 0:
                    return
                body = _dechunk(bytes(buf[self.head_end : k + 7]))
                del buf[: k + 7]
            else:
                if len(buf) < self.need:
                    return
                body = bytes(buf[self.head_end : self.need])
                del buf[: self.need]
            waiter, self.waiter = self.waiter, None
            self.head_end = self.need = -1
            if not waiter.done():
                waiter.set_result((self.status, body))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    i = 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[j + 2 : j + 2 + size])
        i = j + 4 + size


class _HttpPool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_HttpConnection] = []

    async def get(self) -> _HttpConnection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_HttpConnection, self.host, self.port)
        return conn

    def put(self, conn: _HttpConnection) -> None:
        if not conn.closed:
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def _client(spec: LoadSpec, index: int, start_ns: int, progress: Any) -> dict[str, Any]:
    """One client process's run: returns its counts as plain data."""
    clients = spec.clients
    measure_from = start_ns + int(spec.warmup_s * 1e9)
    measure_to = measure_from + int(spec.duration_s * 1e9)
    rec = _Recorder(measure_from, measure_to)
    budget = [spec.max_requests // clients + (1 if index < spec.max_requests % clients else 0)]
    my_conc = spec.concurrency // clients + (1 if index < spec.concurrency % clients else 0)
    n_conn = spec.connections or max(1, min(4, my_conc))
    cpu: list[float] = []

    async def monitor() -> None:
        await asyncio.sleep(max(0.0, (measure_from - time.monotonic_ns()) / 1e9))
        cpu.append(time.process_time())
        while time.monotonic_ns() < measure_to:
            progress[index] = rec.done
            await asyncio.sleep(min(0.25, max(0.0, (measure_to - time.monotonic_ns()) / 1e9)))
        cpu.append(time.process_time())
        progress[index] = rec.done

    senders, streams, close = await _connect(spec, n_conn, rec)
    mon = asyncio.create_task(monitor())
    try:
        if senders:  # one request before the start line: the server answers at all
            await senders[0](0)
        first_errors = dict(rec.errors)
        rec.errors.clear()
        rec.done = 0
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        if spec.protocol == "grpc_stream":
            load = _run_streams(spec, streams, my_conc, rec, budget, start_ns, measure_to, index)
        elif spec.rate is None:
            load = _closed_loop(senders, my_conc, budget, measure_to)
        else:
            load = _open_loop(spec, senders, rec, budget, start_ns, measure_to, index)
        # One timer bounds the whole run: what is still unanswered then is cancelled and counted TIMEOUT.
        remaining = (measure_to - time.monotonic_ns()) / 1e9 + spec.timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load, max(0.1, remaining))
        await asyncio.wait_for(mon, spec.timeout_s + 5)
    finally:
        mon.cancel()
        await close()
    window_cpu = cpu[1] - cpu[0] if len(cpu) == 2 else 0.0
    return {
        "arms": {k.decode("utf-8", "replace"): v for k, v in rec.arms.items()},
        "errors": rec.errors,
        "ok_in_window": rec.ok_in_window,
        "cpu_s": window_cpu,
        "first_errors": first_errors,
        "lag": rec.lag,
    }


Send = Callable[[int], Coroutine[Any, Any, None]]


async def _connect(
    spec: LoadSpec, n_conn: int, rec: _Recorder
) -> tuple[list[Send], list[Any], Callable[[], Awaitable[None]]]:
    """Open the connections; returns unary senders, stream connections and a closer."""
    proto = spec.protocol
    timeout = spec.timeout_s
    req = spec.request
    versions: dict[bytes, bytes] = {}

    def version_of(resp: bytes) -> bytes:
        key = resp[:24]  # model_name and model_version lead the message
        v = versions.get(key)
        if v is None:
            v = wire.scan_field(resp, 2) or b""
            if len(versions) < 64:
                versions[key] = v
        return v

    if proto.startswith("grpc") and spec.grpc_client == "h2":
        from benchmarks import h2grpc

        conns = [await h2grpc.H2Connection.open(spec.host, spec.port) for _ in range(n_conn)]
        authority = f"{spec.host}:{spec.port}"
        block = h2grpc.request_headers(wire.GRPC_INFER, authority)

        def h2_unary(conn: Any) -> Send:
            async def send(intended: int) -> None:
                try:
                    resp = await conn.call(block, req)
                except h2grpc.GrpcError as exc:
                    rec.error(intended, exc.code)
                    return
                except asyncio.CancelledError:
                    rec.error(intended, "TIMEOUT")
                    raise
                rec.ok(intended, version_of(resp))

            return send

        async def close_h2() -> None:
            for c in conns:
                c.close()

        if proto == "grpc_stream":
            return [], conns, close_h2
        return [h2_unary(c) for c in conns], [], close_h2

    if proto == "grpc":  # grpcio's own asyncio client: the reference, about 3x the CPU per call here
        import grpc

        channels = [
            grpc.aio.insecure_channel(
                f"{spec.host}:{spec.port}",
                options=[("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", i)],
            )
            for i in range(n_conn)
        ]
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 30)

        def aio_unary(ch: Any) -> Send:
            call = ch.unary_unary(wire.GRPC_INFER, request_serializer=None, response_deserializer=None)

            async def send(intended: int) -> None:
                try:
                    resp = await call(req, timeout=timeout)
                except asyncio.CancelledError:
                    rec.error(intended, "TIMEOUT")
                    raise
                except Exception as exc:
                    rec.error(intended, _grpc_code(exc))
                    return
                rec.ok(intended, version_of(resp))

            return send

        async def close_aio() -> None:
            for ch in channels:
                with contextlib.suppress(Exception):
                    await ch.close()

        return [aio_unary(ch) for ch in channels], [], close_aio
    if proto == "grpc_stream":
        raise ValueError("gRPC streams are driven by the h2 client only")

    pool = _HttpPool(spec.host, spec.port)

    async def http_send(intended: int) -> None:
        conn = None
        try:
            conn = await pool.get()
            status, body = await conn.request(req)
        except asyncio.CancelledError:
            rec.error(intended, "TIMEOUT")
            raise
        except Exception as exc:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            rec.error(intended, type(exc).__name__)
            return
        pool.put(conn)
        if status != 200:
            rec.error(intended, f"HTTP_{status}")
        else:
            rec.ok(intended, wire.json_version(body[:512]))

    async def close_http() -> None:
        pool.close()

    return [http_send], [], close_http


async def _closed_loop(senders: list[Send], concurrency: int, budget: list[int], deadline: int) -> None:
    async def worker(send: Send) -> None:
        while budget[0] > 0:
            now = time.monotonic_ns()
            if now >= deadline:
                return
            budget[0] -= 1
            await send(now)

    await asyncio.gather(*(worker(senders[i % len(senders)]) for i in range(concurrency)))


async def _open_loop(
    spec: LoadSpec,
    senders: list[Send],
    rec: _Recorder,
    budget: list[int],
    start_ns: int,
    deadline: int,
    index: int,
) -> None:
    """Sends on a fixed schedule from `start_ns`; a send never waits for an earlier answer."""
    assert spec.rate is not None
    interval = 1e9 * spec.clients / spec.rate
    offset = interval * index / spec.clients  # processes interleave their schedules
    in_flight: set[asyncio.Task[None]] = set()
    i = 0
    try:
        while budget[0] > 0:
            intended = int(start_ns + offset + i * interval)
            if intended >= deadline:
                break
            delay = intended - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            i += 1
            if len(in_flight) >= spec.max_in_flight:
                rec.error(intended, "NOT_SENT")
                continue
            budget[0] -= 1
            if intended >= rec.measure_from:
                b = bucket_of((time.monotonic_ns() - intended) // 1000)
                rec.lag[b] = rec.lag.get(b, 0) + 1
            task = asyncio.create_task(senders[i % len(senders)](intended))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(tuple(in_flight))
    finally:
        for task in tuple(in_flight):
            task.cancel()


async def _run_streams(
    spec: LoadSpec,
    conns: list[Any],
    concurrency: int,
    rec: _Recorder,
    budget: list[int],
    start_ns: int,
    deadline: int,
    index: int,
) -> None:
    """One ModelStreamInfer stream per connection; answers are matched to sends by the id we append."""
    from benchmarks import h2grpc

    base = spec.request
    block = h2grpc.request_headers(wire.GRPC_STREAM, f"{spec.host}:{spec.port}")
    n = len(conns)
    shares = [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]
    closed_loop = spec.rate is None

    async def one(conn: Any, share: int, k: int) -> None:
        sent: dict[bytes, int] = {}
        counter = [0]
        sid = 0

        def write(intended: int) -> None:
            counter[0] += 1
            ident = b"%d" % counter[0]
            sent[ident] = intended
            budget[0] -= 1
            conn.send_message(sid, wire.with_id(base, ident))

        def on_message(msg: bytes) -> None:
            error, version, ident = wire.stream_answer(msg)
            intended = sent.pop(ident, None)
            if intended is None:
                return
            if error:
                rec.error(intended, "STREAM_ERROR")
            else:
                rec.ok(intended, version)
            if closed_loop:
                now = time.monotonic_ns()
                if now < deadline and budget[0] > 0:
                    write(now)
                elif not sent:
                    conn.end_stream(sid)

        sid, ended = conn.open_stream(block, on_message)
        try:
            if closed_loop:
                for _ in range(share):
                    if budget[0] <= 0:
                        break
                    write(time.monotonic_ns())
                if not sent:
                    conn.end_stream(sid)
            else:
                assert spec.rate is not None
                interval = 1e9 * spec.clients * n / spec.rate
                t0 = start_ns + interval * (index * n + k) / (spec.clients * n)
                i = 0
                while budget[0] > 0:
                    intended = int(t0 + i * interval)
                    if intended >= deadline:
                        break
                    i += 1
                    delay = intended - time.monotonic_ns()
                    if delay > 0:
                        await asyncio.sleep(delay / 1e9)
                    write(intended)
                conn.end_stream(sid)
            await ended
        except h2grpc.GrpcError as exc:
            for intended in sent.values():
                rec.error(intended, exc.code)
            sent.clear()
        except asyncio.CancelledError:
            for intended in sent.values():
                rec.error(intended, "TIMEOUT")
            sent.clear()
            raise

    await asyncio.gather(*(one(c, s, k) for k, (c, s) in enumerate(zip(conns, shares, strict=True))))


def _client_main(
    spec: LoadSpec, index: int, ready: Any, go: Any, start: Any, progress: Any, results: Any
) -> None:
    """Entry point of a client process (spawned): report ready, wait for the start line, run, report."""
    try:
        ready.put((index, None))
        if not go.wait(120):
            return
        start_ns = int(start.value)
        out = asyncio.run(_client(spec, index, start_ns, progress))
        results.put((index, out, None))
    except BaseException:
        results.put((index, None, traceback.format_exc()))


# --------------------------------------------------------------------------------------------- parent side


class Ticker:
    """What the parent calls while a run goes on (the progress bar); a no-op by default."""

    def update(self, elapsed_s: float, total_s: float, done: int) -> None:  # pragma: no cover - trivial
        pass


def run_load(spec: LoadSpec, server_pids: Iterable[int] = (), ticker: Ticker | None = None) -> LoadResult:
    """Run one load against a server on loopback and return its merged result."""
    ticker = ticker or Ticker()
    pids = list(server_pids)
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start = ctx.Value("d", 0.0, lock=False)
    progress = ctx.Array("q", spec.clients, lock=False)
    procs = [
        ctx.Process(
            target=_client_main,
            args=(spec, i, ready, go, start, progress, results),
            daemon=True,
            name=f"onnxgate-bench-client-{i}",
        )
        for i in range(spec.clients)
    ]
    for p in procs:
        p.start()
    try:
        waiting, deadline = len(procs), time.monotonic() + 120
        while waiting:
            try:
                ready.get(timeout=0.5)
                waiting -= 1
            except queue_mod.Empty:
                dead = [p.exitcode for p in procs if p.exitcode is not None]
                if dead:
                    raise RuntimeError(
                        f"a client process exited with {dead[0]} before it was ready"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("client processes did not start within 120 s") from None
        lead_ns = 300_000_000  # time for every client to open its connections and send one request
        start_ns = time.monotonic_ns() + lead_ns
        start.value = float(start_ns)
        go.set()
        measure_from = start_ns + int(spec.warmup_s * 1e9)
        measure_to = measure_from + int(spec.duration_s * 1e9)
        total_s = (measure_to - start_ns) / 1e9
        cpu0 = None
        while True:
            now = time.monotonic_ns()
            if cpu0 is None and now >= measure_from:
                cpu0 = tree_cpu_seconds(pids)
            if now >= measure_to:
                break
            ticker.update(max(0.0, (now - start_ns) / 1e9), total_s, sum(progress))
            nxt = measure_from if cpu0 is None else measure_to
            time.sleep(max(0.0, min(0.2, (nxt - now) / 1e9)))
        if cpu0 is None:
            cpu0 = tree_cpu_seconds(pids)
        cpu1 = tree_cpu_seconds(pids)
        ticker.update(total_s, total_s, sum(progress))
        outs: list[dict[str, Any]] = []
        failures: list[str] = []
        for _ in procs:
            try:
                _, out, err = results.get(timeout=spec.timeout_s + 60)
            except queue_mod.Empty:
                failures.append("a client process sent no result")
                continue
            if err:
                failures.append(err)
            else:
                outs.append(out)
        if failures and not outs:
            raise RuntimeError("every client process failed:\n" + "\n".join(failures))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(5)
    window = spec.duration_s
    arms: dict[str, dict[int, int]] = {}
    errors: dict[str, int] = {}
    ok = 0
    cpu_each = []
    lag: dict[int, int] = {}
    for out in outs:
        lag = merge([lag, out.get("lag", {})])
        for v, h in out["arms"].items():
            arms[v] = merge([arms.get(v, {}), h])
        for code, n in out["errors"].items():
            errors[code] = errors.get(code, 0) + n
        ok += out["ok_in_window"]
        cpu_each.append(out["cpu_s"])
    if failures:
        errors["CLIENT_FAILED"] = len(failures)
    allh = merge(arms.values())
    total_arm = sum(sum(h.values()) for h in arms.values()) or 1
    arm_rows = {
        v: {**latency_summary(h), "share": round(sum(h.values()) / total_arm, 4)}
        for v, h in sorted(arms.items())
    }
    server_cpu = cpu1 - cpu0 if pids else None
    max_util = max(cpu_each) / window if cpu_each else 0.0
    return LoadResult(
        protocol=spec.protocol,
        concurrency=spec.concurrency if spec.rate is None else 0,
        rate=spec.rate,
        clients=spec.clients,
        window_s=window,
        ok=ok,
        throughput=round(ok / window, 1),
        latency=latency_summary(allh),
        arms=arm_rows,
        errors=errors,
        client_cpu_cores=round(sum(cpu_each) / window, 3),
        client_max_util=round(max_util, 3),
        client_bound=max_util >= CLIENT_BOUND_UTIL,
        server_cpu_s=round(server_cpu, 3) if server_cpu is not None else None,
        server_cpu_us_per_inf=round(server_cpu / ok * 1e6, 1) if server_cpu is not None and ok else None,
        server_cpu_cores=round(server_cpu / window, 3) if server_cpu is not None else None,
        send_lag=latency_summary(lag) if lag else None,
        histogram=allh,
    )
