"""Serving on KServe's model server against ONNX Runtime in-process (and, optionally, another server).

    python -m benchmarks serve [--clients 16] [--requests 200] [--rounds 1] [--threads 2]
                               [--baseline-site DIR]

For the seed CNN (digits, batch 1) and all-MiniLM-L6-v2 (batch 1, sequence 64), C concurrent
clients (threads of this process) each send R requests, in these modes:

- ``in-process``: the threads call one ONNX Runtime session directly;
- ``KServe HTTP``: each thread has its own official ``tritonclient.http`` client and sends
  binary tensor data to ``onnx-compress serve`` (KServe's model server in a child process,
  access log off);
- ``KServe gRPC``: the same with ``tritonclient.grpc`` on the server's gRPC port;
- ``baseline HTTP`` (only with ``--baseline-site DIR``): the same as KServe HTTP against the
  ``onnx-compress serve`` installed in DIR (``pip install --no-deps --target DIR <checkout>``),
  e.g. the hand-written Starlette server this one replaced, started the same way.

Every answer is compared with the in-process answer for the same input (``np.array_equal``);
one differing answer fails the run. After the phases, a burst of bad requests (unknown model,
wrong datatype, wrong shape, malformed JSON, a body over the limit, an unknown encoding, over
HTTP and gRPC) must each be refused with a 4xx / INVALID_ARGUMENT / NOT_FOUND, and the server
must still answer correctly afterwards. Last, what batching buys ONNX Runtime itself (what
Triton's dynamic batching or KServe's batcher could reach at best): samples/s and CPU ms per
sample with batch 1 against batches of C, in this process.

Reported per (model, mode): requests per second (median over rounds), p50 and p99 latency
(over all requests), and the server process's CPU milliseconds per request (user + system,
from /proc; for in-process: this process's), which depends much less on other load on the
machine than wall-clock numbers. Phases of one model are interleaved over ``--rounds`` rounds
(A B C, C B A, ...). ONNX Runtime uses ``--threads`` intra-op threads with spinning off in
every mode; clients and servers share the machine's cores.

Models: ``artifacts/torch/seed_cnn.onnx`` and ``artifacts/minilm/minilm.onnx`` when present,
else built from the samples (torch). Writes ``artifacts/benchmarks/serve.json``.
"""

from __future__ import annotations

import gzip
import http.client
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

from benchmarks import parser as benchmark_parser, write_results

ROOT = Path(__file__).resolve().parents[1]

Feeds = dict[str, np.ndarray]


def _seed_cnn(path: Path) -> Path:
    if path.exists():
        return path
    from onnx_compress.samples import seed_torch_cnn
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
    from onnx_compress.samples import minilm

    path.parent.mkdir(parents=True, exist_ok=True)
    minilm.export_minilm(path, sequence=64)
    return path


def _minilm_feeds(count: int) -> list[Feeds]:
    """``count`` real tokenized sentences at sequence 64, one per request."""
    from onnx_compress.samples import minilm

    data = minilm.text_dataset(minilm.sentences(count), sequence=64)
    return [{k: v[i : i + 1] for k, v in data.inputs.items()} for i in range(len(data))]


def _digits_feeds(count: int) -> list[Feeds]:
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


def _wait_ready(url: str, process: subprocess.Popen, log) -> None:
    host, port = url.split(":")
    deadline = time.monotonic() + 300
    while True:
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise SystemExit(f"the server did not start:\n{log.read().decode(errors='replace')[-4000:]}")
        time.sleep(0.3)


class _Baseline:
    """``onnx-compress serve REPO`` from another installation (PYTHONPATH=site) in a child process."""

    def __init__(self, site: Path, repo: Path, threads: int, limit: int) -> None:
        self.url = f"127.0.0.1:{_free_port()}"
        self.log = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONPATH": str(site)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "onnx_compress.cli.main", "serve", str(repo), "--port", self.url.split(":")[1],
             "--threads", str(threads), "--no-access-log", "--max-request-mb", str(limit / 2**20)], stdout=subprocess.DEVNULL, stderr=self.log, env=env,
            cwd=site)  # not this checkout: python -m puts the working folder first on sys.path
        self.pid = self.process.pid
        _wait_ready(self.url, self.process, self.log)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def _phase(call_factory: Callable[[], Callable[[int], bool]], clients: int, requests: int,
           ) -> tuple[float, list[float], int]:
    """``clients`` threads x ``requests`` calls; (req/s, latencies in ms, wrong answers)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    wrong = [0] * clients
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        try:
            call = call_factory()
            for j in range(3):
                call(k + j)
            barrier.wait()
            for j in range(requests):
                start = time.perf_counter()
                ok = call(k * requests + j)
                latencies[k].append((time.perf_counter() - start) * 1e3)
                wrong[k] += not ok
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
    return len(flat) / wall, flat, sum(wrong)


def _datatype(array: np.ndarray) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[array.dtype]


def _in_process(session, output: str, feeds: list[Feeds], expected: list[np.ndarray]):
    def factory():
        def call(i: int) -> bool:
            return bool(np.array_equal(session.run([output], feeds[i % len(feeds)])[0], expected[i % len(feeds)]))
        return call
    return factory


def _http(url: str, model: str, output: str, feeds: list[Feeds], expected: list[np.ndarray]):
    import tritonclient.http as httpclient

    def factory():
        client = httpclient.InferenceServerClient(url, network_timeout=300)

        def call(i: int) -> bool:
            inputs = []
            for name, array in feeds[i % len(feeds)].items():
                tensor = httpclient.InferInput(name, list(array.shape), _datatype(array))
                tensor.set_data_from_numpy(array, binary_data=True)
                inputs.append(tensor)
            result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(output, binary_data=True)])
            return bool(np.array_equal(result.as_numpy(output), expected[i % len(feeds)]))
        return call
    return factory


def _grpc(url: str, model: str, output: str, feeds: list[Feeds], expected: list[np.ndarray]):
    import tritonclient.grpc as grpcclient

    def factory():
        client = grpcclient.InferenceServerClient(url)

        def call(i: int) -> bool:
            inputs = []
            for name, array in feeds[i % len(feeds)].items():
                tensor = grpcclient.InferInput(name, list(array.shape), _datatype(array))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(output)])
            return bool(np.array_equal(result.as_numpy(output), expected[i % len(feeds)]))
        return call
    return factory


def _raw(url: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    host, port = url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _bad_burst(http_url: str, grpc_url: str | None, model: str, feeds: Feeds, limit: int) -> dict[str, int]:
    """Send bad requests; the status each got (all must be refused)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    name, array = next(iter(feeds.items()))
    statuses: dict[str, int] = {}
    client = httpclient.InferenceServerClient(http_url)

    def tensor(datatype: str, value: np.ndarray):
        t = httpclient.InferInput(name, list(value.shape), datatype)
        t.set_data_from_numpy(value, binary_data=True)
        return t

    wrong_type = array.astype(np.float64 if array.dtype == np.float32 else np.int32)
    cases = {
        "unknown model": lambda: client.infer("no-such-model", [tensor(_datatype(array), array)]),
        "wrong datatype": lambda: client.infer(model, [tensor("FP64" if array.dtype == np.float32 else "INT32",
                                                               wrong_type)]),
        "wrong shape": lambda: client.infer(model, [tensor(_datatype(array), array.reshape(-1))]),
    }
    for label, call in cases.items():
        try:
            call()
            statuses[label] = 200
        except InferenceServerException as exc:
            statuses[label] = int(exc.status())
    path = f"/v2/models/{model}/infer"
    statuses["malformed JSON"] = _raw(http_url, path, b"{not json", {})
    statuses["oversized body"] = _raw(http_url, path, b"x" * (limit + 1), {})
    statuses["unknown encoding"] = _raw(http_url, path, b"x", {"Content-Encoding": "br"})
    statuses["bad gzip"] = _raw(http_url, path, gzip.compress(b"{not json"), {"Content-Encoding": "gzip"})
    if grpc_url is not None:
        import tritonclient.grpc as grpcclient

        grpc = grpcclient.InferenceServerClient(grpc_url)
        for label, call in {
            "gRPC unknown model": lambda: grpc.infer("no-such-model", [_grpc_tensor(name, array)]),
            "gRPC wrong shape": lambda: grpc.infer(model, [_grpc_tensor(name, array.reshape(-1))]),
        }.items():
            try:
                call()
                statuses[label] = 200
            except InferenceServerException as exc:
                statuses[label] = {"StatusCode.INVALID_ARGUMENT": 400, "StatusCode.NOT_FOUND": 404}.get(
                    str(exc.status()), 500)
    return statuses


def _batching_effect(session, output: str, feeds: list[Feeds], batch: int) -> dict[str, float]:
    """What merging requests into batches buys ONNX Runtime itself (the upper bound of Triton's
    dynamic batching or KServe's batcher): samples/s and CPU ms/sample, batch 1 against ``batch``."""
    merged = [{k: np.concatenate([feeds[(i + j) % len(feeds)][k] for j in range(batch)]) for k in feeds[0]}
              for i in range(0, len(feeds), batch)]
    result = {}
    for label, calls, per_call in (("batch 1", feeds, 1), (f"batch {batch}", merged, batch)):
        for call in calls[:2]:
            session.run([output], call)  # warm-up
        samples, start, cpu = 0, time.perf_counter(), time.process_time()
        while samples < 4 * len(feeds):
            for call in calls:
                session.run([output], call)
                samples += per_call
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        result[f"{label} samples_per_s"] = samples / wall
        result[f"{label} cpu_ms_per_sample"] = cpu * 1e3 / samples
    return result


def _grpc_tensor(name: str, array: np.ndarray):
    import tritonclient.grpc as grpcclient

    t = grpcclient.InferInput(name, list(array.shape), _datatype(array))
    t.set_data_from_numpy(array)
    return t


def main(argv: list[str]) -> int:
    parser = benchmark_parser("serve", __doc__)
    parser.add_argument("--seed-cnn", type=Path, default=ROOT / "artifacts" / "torch" / "seed_cnn.onnx")
    parser.add_argument("--minilm", type=Path, default=ROOT / "artifacts" / "minilm" / "minilm.onnx")
    parser.add_argument("--models", default="seed_cnn,minilm", help="models to measure (default seed_cnn,minilm)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=200, help="requests per client per phase (default 200)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--baseline-site", type=Path, default=None,
                        help="a folder with another onnx-compress installed (pip install --target): its server "
                             "is measured side by side as 'baseline HTTP'")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from benchmarks import environment
    from onnx_compress.runtime import SessionSettings, deploy_triton
    from onnx_compress.runtime.serve import BackgroundServer
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
    env = environment()  # the load average at the start
    models = {name: builders[name]() for name in wanted}
    settings = SessionSettings(provider="cpu", intra_op_threads=args.threads, spinning=False)  # as the server
    limit = 1 << 20
    results: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        repo = Path(tmp) / "repo"
        for name, (path, _, _) in models.items():
            deploy_triton(path, repo, name)
        server = BackgroundServer(repo, session=settings, access_log=False, max_request_bytes=limit).start()
        baseline = _Baseline(args.baseline_site, repo, args.threads, limit) if args.baseline_site else None
        try:
            for name, (path, output, feeds) in models.items():
                session: ort.InferenceSession = Runner(path, settings).session
                expected = [session.run([output], feed)[0] for feed in feeds]
                factories: dict[str, tuple[Callable, int]] = {
                    "in-process": (_in_process(session, output, feeds, expected), os.getpid()),
                    "KServe HTTP": (_http(server.url, name, output, feeds, expected), server.pid),
                    "KServe gRPC": (_grpc(server.grpc_url, name, output, feeds, expected), server.pid),
                }
                if baseline is not None:
                    factories["baseline HTTP"] = (_http(baseline.url, name, output, feeds, expected), baseline.pid)
                modes = list(factories)
                rps: dict[str, list[float]] = {mode: [] for mode in modes}
                latencies: dict[str, list[float]] = {mode: [] for mode in modes}
                cpu = {mode: 0.0 for mode in modes}
                wrong = {mode: 0 for mode in modes}
                for round_index in range(args.rounds):
                    for mode in modes if round_index % 2 == 0 else reversed(modes):
                        factory, pid = factories[mode]
                        before = _cpu_seconds(pid)  # includes the 3 warm-up calls per client: a small overestimate
                        value, samples, bad = _phase(factory, args.clients, args.requests)
                        cpu[mode] += _cpu_seconds(pid) - before
                        rps[mode].append(value)
                        latencies[mode].extend(samples)
                        wrong[mode] += bad
                        print(f"{name}: {mode} round {round_index + 1} done", file=sys.stderr, flush=True)
                cell = {}
                for mode in modes:
                    count = len(latencies[mode])
                    cell[mode] = {
                        "requests_per_s": float(np.median(rps[mode])),
                        "p50_ms": float(np.percentile(latencies[mode], 50)),
                        "p99_ms": float(np.percentile(latencies[mode], 99)),
                        "requests": count,
                        "wrong_answers": wrong[mode],
                        "cpu_ms_per_request": cpu[mode] * 1e3 / count,
                    }
                    rows.append([name, mode, f"{cell[mode]['requests_per_s']:.0f}", f"{cell[mode]['p50_ms']:.2f}",
                                 f"{cell[mode]['p99_ms']:.2f}", f"{cell[mode]['cpu_ms_per_request']:.2f}",
                                 f"{wrong[mode]}/{count}"])
                burst = {"KServe": _bad_burst(server.url, server.grpc_url, name, feeds[0], limit)}
                if baseline is not None:
                    burst["baseline"] = _bad_burst(baseline.url, None, name, feeds[0], limit)
                alive = {"KServe": server.alive() and factories["KServe HTTP"][0]()(0)
                         and factories["KServe gRPC"][0]()(1)}
                if baseline is not None:
                    alive["baseline"] = baseline.alive() and factories["baseline HTTP"][0]()(0)
                batching = _batching_effect(session, output, feeds, args.clients)
                results[name] = {"modes": cell, "bad_requests": burst, "alive_after_bad_requests": alive,
                                 "batching_in_process": batching}
                if any(wrong.values()):
                    raise SystemExit(f"{name}: served answers differ from in-process ONNX Runtime: {wrong}")
                refused = [f"{server_name} {label}: {status}" for server_name, statuses in burst.items()
                           for label, status in statuses.items() if not 400 <= status < 500]
                if refused or not all(alive.values()):
                    raise SystemExit(f"{name}: bad requests not refused with a 4xx {refused} or server down {alive}")
        finally:
            server.stop()
            if baseline is not None:
                baseline.stop()
    print(format_table(["model", "mode", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "wrong"], rows))
    print(f"({args.clients} clients x {args.requests} requests per phase x {args.rounds} round(s); batch 1; MiniLM "
          f"sequence 64; ONNX Runtime {args.threads} intra-op threads, spinning off; {os.cpu_count()} CPUs shared "
          "by clients and servers; every answer compared with in-process ONNX Runtime)")
    for name, entry in results.items():
        print(f"{name}: bad requests refused {entry['bad_requests']}; alive after: {entry['alive_after_bad_requests']}")
        print(f"{name}: ONNX Runtime in-process, batching effect: "
              + ", ".join(f"{k} {v:.2f}" for k, v in entry["batching_in_process"].items()))
    payload = {"settings": {"threads": args.threads, "clients": args.clients, "requests": args.requests,
                            "rounds": args.rounds, "baseline_site": str(args.baseline_site or "")},
               "environment": env, "results": results}
    write_results(args.out, "serve", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
