"""Serving overhead: the KServe v2 server against ONNX Runtime called in-process.

    python -m benchmarks serve [--clients 1,4,16] [--requests 200] [--rounds 3] [--threads 2]

For the seed CNN (digits, batch 1) and all-MiniLM-L6-v2 (batch 1, sequence 64), under 1, 4 and
16 concurrent clients, three ways of running the same model on the same inputs:

- ``in-process``: C Python threads call one ONNX Runtime session directly;
- ``served binary``: C threads, each with its own official ``tritonclient.http`` client, call
  ``onnx-compress serve`` (a separate process, uvicorn + Starlette, access log off) with
  binary tensor data (the client's default);
- ``served JSON``: the same with JSON tensor data.

Each phase sends ``--requests`` requests in all (split over the clients) after 3 warm-up
requests per client; phases of one (model, clients) cell are interleaved over ``--rounds``
rounds (A B C, C B A, ...), so machine load hits them alike. Reported: requests per second
(median over rounds), p50 and p99 latency (over all requests of the cell), the overhead
ratio = in-process req/s / served req/s, and CPU milliseconds per request: of the server
process for the served modes (HTTP + protocol + ONNX Runtime, not the clients), of this process
for in-process (ONNX Runtime). CPU time per request depends much less on other load on the
machine than wall-clock numbers do. ONNX Runtime uses ``--threads`` intra-op threads in
both the server and in-process, with thread spinning off in both (the server's default).
Clients and server share the machine's cores.

Models: ``artifacts/torch/seed_cnn.onnx`` and ``artifacts/minilm/minilm.onnx`` when present
(``make demo``, ``python samples/minilm.py``), else they are built from the samples (torch).
Writes ``artifacts/benchmarks/serve.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import write_results

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
MODES = ("in-process", "served binary", "served JSON")


def _seed_cnn(path: Path) -> Path:
    if path.exists():
        return path
    sys.path.insert(0, str(SAMPLES))
    import seed_torch_cnn
    import torch

    import onnx_compress as oc

    torch.set_num_threads(2)
    model, splits = seed_torch_cnn.trained_model()
    path.parent.mkdir(parents=True, exist_ok=True)
    oc.export_torch(model, torch.from_numpy(splits.test.take(1).inputs["input"]), path)
    return path


def _minilm(path: Path) -> Path:
    if path.exists():
        return path
    sys.path.insert(0, str(SAMPLES))
    import minilm

    path.parent.mkdir(parents=True, exist_ok=True)
    minilm.export_minilm(path, sequence=64)
    return path


def _minilm_feeds(count: int) -> list[dict[str, np.ndarray]]:
    """``count`` real tokenized sentences at sequence 64, one per request."""
    sys.path.insert(0, str(SAMPLES))
    import minilm

    data = minilm.text_dataset(minilm.sentences(count), sequence=64)
    return [{k: v[i : i + 1] for k, v in data.inputs.items()} for i in range(len(data))]


def _digits_feeds(count: int) -> list[dict[str, np.ndarray]]:
    import onnx_compress as oc

    images = oc.load_digits("NCHW").test.inputs["input"][:count]
    return [{"input": images[i : i + 1]} for i in range(len(images))]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc (Linux); nan elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _ServerProcess:
    """``onnx-compress serve REPO`` in a subprocess, ready when its health endpoint answers."""

    def __init__(self, repo: Path, threads: int) -> None:
        self.port = _free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "onnx_compress.cli.main", "serve", str(repo), "--port", str(self.port),
             "--threads", str(threads), "--no-access-log"],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )
        import tritonclient.http as httpclient

        deadline = time.monotonic() + 300
        while True:
            try:
                with httpclient.InferenceServerClient(self.url) as probe:
                    if probe.is_server_ready():
                        return
            except Exception:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise SystemExit(f"the server did not start:\n{self.log.read().decode(errors='replace')}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def _phase(call_factory: Callable[[], Callable[[dict[str, np.ndarray]], None]],
           feeds: list[dict[str, np.ndarray]], clients: int, requests: int) -> tuple[float, list[float]]:
    """Run ``requests`` calls over ``clients`` threads; (requests per second, latencies in ms)."""
    per_client = max(1, requests // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        try:
            call = call_factory()
            for j in range(3):
                call(feeds[(k + j) % len(feeds)])
            barrier.wait()
            for j in range(per_client):
                start = time.perf_counter()
                call(feeds[(k * per_client + j) % len(feeds)])
                latencies[k].append((time.perf_counter() - start) * 1e3)
        except BaseException as exc:  # reported after the phase
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    flat = [value for values in latencies for value in values]
    return len(flat) / wall, flat


def _in_process_factory(session, output: str):
    def factory():
        return lambda feeds: session.run([output], feeds)
    return factory


def _served_factory(url: str, model: str, output: str, datatypes: dict[str, str], binary: bool):
    import tritonclient.http as httpclient

    def factory():
        client = httpclient.InferenceServerClient(url, network_timeout=300)

        def call(feeds: dict[str, np.ndarray]) -> None:
            inputs = []
            for name, array in feeds.items():
                tensor = httpclient.InferInput(name, list(array.shape), datatypes[name])
                tensor.set_data_from_numpy(array, binary_data=binary)
                inputs.append(tensor)
            outputs = [httpclient.InferRequestedOutput(output, binary_data=binary)]
            client.infer(model, inputs, outputs=outputs).as_numpy(output)

        return call

    return factory


def _cell(model: str, output: str, session, server: _ServerProcess, feeds, clients: int, requests: int,
          rounds: int) -> dict:
    url = server.url
    datatypes = {name: ("FP32" if array.dtype == np.float32 else "INT64") for name, array in feeds[0].items()}
    factories = {
        "in-process": _in_process_factory(session, output),
        "served binary": _served_factory(url, model, output, datatypes, True),
        "served JSON": _served_factory(url, model, output, datatypes, False),
    }
    rps: dict[str, list[float]] = {mode: [] for mode in MODES}
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, float] = {mode: 0.0 for mode in MODES}
    for round_index in range(rounds):
        order = MODES if round_index % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            pid = os.getpid() if mode == "in-process" else server.process.pid
            before = _cpu_seconds(pid)  # includes the warm-up calls: a small overestimate
            value, samples = _phase(factories[mode], feeds, clients, requests)
            cpu[mode] += _cpu_seconds(pid) - before
            rps[mode].append(value)
            latencies[mode].extend(samples)
    result = {}
    for mode in MODES:
        result[mode] = {
            "requests_per_s": float(np.median(rps[mode])),
            "p50_ms": float(np.percentile(latencies[mode], 50)),
            "p99_ms": float(np.percentile(latencies[mode], 99)),
            "requests": len(latencies[mode]),
            "cpu_ms_per_request": cpu[mode] * 1e3 / len(latencies[mode]),
        }
    base = result["in-process"]["requests_per_s"]
    for mode in MODES[1:]:
        result[mode]["overhead"] = base / result[mode]["requests_per_s"]
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks serve", description=__doc__.splitlines()[0])
    parser.add_argument("--seed-cnn", type=Path, default=ROOT / "artifacts" / "torch" / "seed_cnn.onnx")
    parser.add_argument("--minilm", type=Path, default=ROOT / "artifacts" / "minilm" / "minilm.onnx")
    parser.add_argument("--models", default="seed_cnn,minilm", help="models to measure (default seed_cnn,minilm)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent client counts (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=200, help="requests per phase, over all clients (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmarks",
                        help="output folder (writes serve.json there)")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    import onnxruntime as ort

    from onnx_compress.runtime import SessionSettings, deploy_triton
    from onnx_compress.runtime.session import Runner
    from onnx_compress.table import format_table

    builders = {
        "seed_cnn": lambda: (_seed_cnn(args.seed_cnn), "output", _digits_feeds(64)),
        "minilm": lambda: (_minilm(args.minilm), "embedding", _minilm_feeds(64)),
    }
    wanted = args.models.split(",")
    unknown = sorted(set(wanted) - set(builders))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(builders)}")
    models = {name: builders[name]() for name in wanted}
    settings = SessionSettings(provider="cpu", intra_op_threads=args.threads, spinning=False)  # as the server
    results: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        repo = Path(tmp) / "repo"
        for name, (path, _, _) in models.items():
            deploy_triton(path, repo, name)
        server = _ServerProcess(repo, args.threads)
        try:
            for name, (path, output, feeds) in models.items():
                session: ort.InferenceSession = Runner(path, settings).session
                results[name] = {}
                for count in clients:
                    cell = _cell(name, output, session, server, feeds, count, args.requests, args.rounds)
                    results[name][str(count)] = cell
                    for mode in MODES:
                        entry = cell[mode]
                        overhead = f"{entry['overhead']:.2f}x" if "overhead" in entry else ""
                        rows.append([name, count, mode, f"{entry['requests_per_s']:.0f}",
                                     f"{entry['p50_ms']:.2f}", f"{entry['p99_ms']:.2f}", overhead,
                                     f"{entry['cpu_ms_per_request']:.2f}"])
                    print(f"{name}, {count} client(s): done", file=sys.stderr, flush=True)
        finally:
            server.stop()
    print(format_table(["model", "clients", "mode", "req/s", "p50 ms", "p99 ms", "overhead", "CPU ms/req"], rows))
    print(f"(batch 1; MiniLM sequence 64; ONNX Runtime {args.threads} intra-op threads, CPU; "
          f"{args.requests} requests per phase x {args.rounds} interleaved rounds; "
          f"overhead = in-process req/s / served req/s; {os.cpu_count()} CPUs shared by clients and server)")
    payload = {"settings": {"threads": args.threads, "requests": args.requests, "rounds": args.rounds,
                            "clients": clients, "cpus": os.cpu_count()}, "results": results}
    write_results(args.out, "serve", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
