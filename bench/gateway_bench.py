"""Gateway overhead: the same small unary call (DataService.ValidateDataset on the original
five-line sample) through the HTTP gateway and directly over gRPC, in one run.

The data service and the gateway run as real processes (`python -m services.data`,
`python -m gateway`) on free ports with a temporary workspace; this process is the client.
Sequential calls and 16 concurrent callers; prints p50/p99 per path and the latency the
gateway adds (gateway minus direct). Goal: at most 2 ms added at p50.

The HTTP client is a minimal keep-alive HTTP/1.1 client on raw sockets, so that the figure is
the gateway's cost rather than an HTTP client library's. If `services.data.server` is not
there yet, a stand-in DataService (same call, reads and counts the file) is served instead,
and the output says so.

    .venv/bin/python bench/gateway_bench.py [--requests 1000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]

import grpc  # noqa: E402

import services  # noqa: E402,F401
from benchlib import stop_processes  # noqa: E402
from wintrain.data.v1 import data_pb2, data_pb2_grpc  # noqa: E402

SAMPLE = REPO / "services" / "common" / "assets" / "datasets" / "train_sample.jsonl"
FILE_PATH = "data/train_sample.jsonl"


# --------------------------------------------------------------------------- stand-in backend
def serve_stand_in(port: int, workspace: str) -> None:
    """A DataService with only ValidateDataset (reads and counts the rows), used when the real
    service has not landed; it runs on the shared bootstrap like the real one."""
    from services.common.config import load_config
    from services.common.server import create_server, service_full_name

    class StandIn(data_pb2_grpc.DataServiceServicer):
        async def ValidateDataset(self, request, context):
            rows = [json.loads(line) for line in (Path(workspace) / request.file_path).read_text("utf-8").splitlines()
                    if line.strip()]
            ok = sum(1 for r in rows if isinstance(r.get("conversations"), list))
            return data_pb2.ValidateDatasetResponse(is_valid=ok == len(rows), total_samples=len(rows),
                                                    valid_samples=ok, invalid_samples=len(rows) - ok)

    def register(runtime):
        data_pb2_grpc.add_DataServiceServicer_to_server(StandIn(), runtime.server)
        return [service_full_name(data_pb2, "DataService")]

    async def main():
        runtime, _ = create_server(load_config(), "data", register, port=port)
        await runtime.start()
        await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start in {timeout}s")


def grpc_ready(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- HTTP client
def _request(port: int) -> bytes:
    return (f"POST /api/data/validate?file_path={FILE_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def _split_response(buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(head, body, rest) when `buffer` holds one whole response."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    start = end + 4
    if len(buffer) < start + length:
        return None
    return head, buffer[start:start + length], buffer[start + length:]


class HttpConnection:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = _request(port)
        self.buffer = b""

    def call(self) -> tuple[bytes, bytes]:
        self.sock.sendall(self.request)
        while True:
            whole = _split_response(self.buffer)
            if whole:
                head, body, self.buffer = whole
                return head, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("gateway closed the connection")
            self.buffer += chunk


async def http_worker(port: int, n: int, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request, buffer = _request(port), b""
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        while True:
            whole = _split_response(buffer)
            if whole:
                head, _, buffer = whole
                break
            buffer += await reader.read(65536)
        out.append(time.perf_counter() - t0)
        assert head.startswith(b"HTTP/1.1 200"), head
    writer.close()


async def grpc_worker(stub, n: int, out: list[float]) -> None:
    request = data_pb2.ValidateDatasetRequest(file_path=FILE_PATH)
    for _ in range(n):
        t0 = time.perf_counter()
        reply = await stub.ValidateDataset(request, timeout=30)
        out.append(time.perf_counter() - t0)
        assert reply.total_samples == 5


# --------------------------------------------------------------------------- measurements
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


def sequential(gateway_port: int, data_address: str, n: int, warmup: int) -> dict[str, list[float]]:
    conn = HttpConnection(gateway_port)
    head, body = conn.call()
    envelope = json.loads(body)
    assert head.startswith(b"HTTP/1.1 200") and envelope["success"] is True, (head, body)
    assert envelope["data"]["total_samples"] == 5, envelope
    channel = grpc.insecure_channel(data_address)
    stub = data_pb2_grpc.DataServiceStub(channel)
    request = data_pb2.ValidateDatasetRequest(file_path=FILE_PATH)
    assert stub.ValidateDataset(request, timeout=30).is_valid
    times: dict[str, list[float]] = {"grpc": [], "gateway": []}
    for i in range(warmup + n):  # interleaved, so both paths see the same machine load
        t0 = time.perf_counter()
        stub.ValidateDataset(request, timeout=30)
        t1 = time.perf_counter()
        conn.call()
        t2 = time.perf_counter()
        if i >= warmup:
            times["grpc"].append(t1 - t0)
            times["gateway"].append(t2 - t1)
    channel.close()
    conn.sock.close()
    return times


async def concurrent(gateway_port: int, data_address: str, n: int, workers: int) -> dict[str, tuple[list[float], float]]:
    per_worker = max(1, n // workers)
    results: dict[str, tuple[list[float], float]] = {}
    async with grpc.aio.insecure_channel(data_address) as channel:
        stub = data_pb2_grpc.DataServiceStub(channel)
        await asyncio.gather(*(grpc_worker(stub, 5, []) for _ in range(workers)))  # warm-up
        out: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(grpc_worker(stub, per_worker, out) for _ in range(workers)))
        results["grpc"] = (out, time.perf_counter() - t0)
    await asyncio.gather(*(http_worker(gateway_port, 5, []) for _ in range(workers)))  # warm-up
    out = []
    t0 = time.perf_counter()
    await asyncio.gather(*(http_worker(gateway_port, per_worker, out) for _ in range(workers)))
    results["gateway"] = (out, time.perf_counter() - t0)
    return results


def report(title: str, times: dict[str, list[float]], elapsed: dict[str, float] | None = None) -> dict:
    print(f"\n{title}")
    print(f"  {'path':<26}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}")
    rows = {}
    for name, label in (("grpc", "direct gRPC"), ("gateway", "HTTP gateway -> gRPC")):
        values = times[name]
        rate = len(values) / elapsed[name] if elapsed else len(values) / sum(values)
        rows[name] = (pct(values, 50), pct(values, 99), statistics.fmean(values) * 1000, rate)
        print(f"  {label:<26}{rows[name][0]:>9.3f}{rows[name][1]:>9.3f}{rows[name][2]:>9.3f}{rate:>9.0f}")
    added50 = rows["gateway"][0] - rows["grpc"][0]
    added99 = rows["gateway"][1] - rows["grpc"][1]
    print(f"  added by the gateway: p50 {added50:+.3f} ms, p99 {added99:+.3f} ms "
          f"(p50 ratio {rows['gateway'][0] / rows['grpc'][0]:.2f}x)")
    return {"added_p50_ms": added50, "added_p99_ms": added99, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--stand-in", nargs=2, metavar=("PORT", "WORKSPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_in:
        serve_stand_in(int(args.stand_in[0]), args.stand_in[1])
        return 0

    real_data = importlib.util.find_spec("services.data.server") is not None
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    workspace = tmp / "ws"
    (workspace / "data").mkdir(parents=True)
    shutil.copy(SAMPLE, workspace / FILE_PATH)
    data_port, gateway_port = free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               WINTRAIN__STORAGE__WORKSPACE=str(workspace), WINTRAIN__SERVICES__DATA__PORT=str(data_port),
               WINTRAIN__API__PORT=str(gateway_port), WINTRAIN__INFERENCE__AUTO_LOAD="false",
               # every concurrent caller may wait for a dataset pass (the default queue of 8
               # refuses the rest with RESOURCE_EXHAUSTED, which is admission control, not speed)
               WINTRAIN__DATASET__MAX_QUEUE=str(max(8, args.concurrency)))
    data_cmd = ([sys.executable, "-m", "services.data"] if real_data
                else [sys.executable, __file__, "--stand-in", str(data_port), str(workspace)])
    procs = []
    try:
        with open(tmp / "data.log", "wb") as data_log, open(tmp / "gateway.log", "wb") as gw_log:
            procs.append(subprocess.Popen(data_cmd, cwd=REPO, env=env, stdout=data_log, stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=env,
                                          stdout=gw_log, stderr=subprocess.STDOUT))
            data_address = f"127.0.0.1:{data_port}"
            wait_until(lambda: grpc_ready(data_address), "data service")
            wait_until(lambda: socket.create_connection(("127.0.0.1", gateway_port), timeout=1).close() is None,
                       "gateway")
            print(f"gateway bench: ValidateDataset on the five-line sample, {args.requests} calls per path, "
                  f"backend = {'services.data (real)' if real_data else 'STAND-IN DataService (services.data not there yet)'}")
            print(f"machine: {os.cpu_count()} CPUs; data service, gateway and this client are separate processes")
            import psutil

            gateway_proc = psutil.Process(procs[1].pid)
            cpu0 = sum(gateway_proc.cpu_times()[:2])
            seq = report("sequential (1 caller, keep-alive)",
                         sequential(gateway_port, data_address, args.requests, args.warmup))
            cpu_us = (sum(gateway_proc.cpu_times()[:2]) - cpu0) / (args.requests + args.warmup + 1) * 1e6
            print(f"  gateway process CPU per request: {cpu_us:.0f} us (user+system)")
            conc_raw = asyncio.run(concurrent(gateway_port, data_address, args.requests, args.concurrency))
            conc = report(f"concurrency {args.concurrency}",
                          {k: v[0] for k, v in conc_raw.items()}, {k: v[1] for k, v in conc_raw.items()})
            goal = "met" if seq["added_p50_ms"] <= 2.0 else "NOT met"
            print(f"\ngoal (<= 2 ms added at p50, sequential): {goal} ({seq['added_p50_ms']:.3f} ms); "
                  f"at concurrency {args.concurrency}: {conc['added_p50_ms']:.3f} ms")
    finally:
        stop_processes(procs, 15)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
