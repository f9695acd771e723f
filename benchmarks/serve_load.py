"""How `polymodal serve` holds load: a fixed number of text searches from this process to a server process over
loopback, at several numbers of concurrent clients; throughput, latency percentiles, failures, and how many
requests one model call answered (the micro-batcher's work, read from the server's /metrics).

Each client sends its next request as soon as its previous one is answered (a closed loop), so "concurrency" is the
number of requests in flight. Queries cycle through varied phrases. A warm-up round runs first at every level.
Each runtime (``--runtimes``) gets its own server, one after the other in this run, so their rows compare.

    python benchmarks/serve_load.py [--quickstart runs/quickstart | --index DIR [--checkpoint C]]
                                    [--requests 400] [--concurrency 1 8 32] [--server-threads N]
                                    [--batch-wait-ms 10] [--runtimes torch onnxruntime] [--out docs]

With ``--out`` the table is also written to ``OUT/serve_load.md`` and ``OUT/serve_load.json`` with the command,
the CPU and the machine's load average before and after (other work on the machine shows in the latencies).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np

from report_setup import processor_name, start_report

QUERIES = ("a cat", "a red heart", "a rocket", "a cup of coffee", "a smiling face with sunglasses", "a dog",
           "a green tree", "a car", "the moon", "a pizza slice", "a musical note", "a flag", "an astronaut",
           "a photo of a horse", "a yellow star", "a house with a red roof")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, onnx: str | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "polymodal.cli", "serve", "--port", str(port),
               "--batch-wait-ms", str(args.batch_wait_ms)]
    if args.index:
        command += ["--index", args.index] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    else:
        command += ["--quickstart", args.quickstart]
    if onnx:
        command += ["--onnx", onnx]
    if args.server_threads:
        command += ["--threads", str(args.server_threads)]
    # The log goes to a file: a pipe nobody reads would block the server once it fills.
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=tempfile.TemporaryFile())


def export_onnx_of(args: argparse.Namespace, out: Path) -> str:
    """``polymodal convert`` of the served search model to ONNX (fp32: the same embeddings)."""
    if args.index:
        index = args.index
    else:
        index = str(Path(args.quickstart) / "index")
    checkpoint = args.checkpoint or json.loads((Path(index) / "meta.json").read_text())["checkpoint"]
    subprocess.run([sys.executable, "-m", "polymodal.cli", "convert", checkpoint, "--to", "onnx", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return str(out)


def wait_ready(url: str, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            server.stderr.seek(0)
            raise SystemExit(f"the server exited with {server.returncode}: {server.stderr.read()[-2000:].decode()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.25)
    raise SystemExit(f"the server did not answer within {timeout} s")


class RawClient:
    """One keep-alive HTTP/1.1 connection that speaks just enough of the protocol to POST a form and read the
    reply. The load generator shares the server's cores, so its own CPU time inflates the latencies it measures:
    this costs a small fraction of httpx's time per request (``--client httpx`` runs httpx instead)."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = urlencode(fields).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                          f"application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class HttpxClient:
    """The same requests through httpx (one connection per client)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1))

    async def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, bytes]:
        response = await self.client.post(path, data=fields)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}
# What embeds the queries: the PyTorch model (serve's default) or onnxruntime on its export (serve --onnx).
RUNTIMES = ("torch", "onnxruntime")


async def fire(url: str, total: int, concurrency: int, k: int, kind: str) -> tuple[list[float], int, float]:
    """``total`` searches from ``concurrency`` closed-loop clients: (latencies in s, failures, wall time)."""
    latencies: list[float] = []
    failures = 0
    sent = 0

    async def one_client() -> None:
        nonlocal sent, failures
        client = CLIENTS[kind](url)
        try:
            while sent < total:
                query = QUERIES[sent % len(QUERIES)]
                sent += 1
                started = time.perf_counter()
                try:
                    status, body = await client.post_form("/search", {"text": query, "k": str(k)})
                    ok = status == 200 and len(json.loads(body)["results"]) > 0
                except (OSError, ValueError, asyncio.IncompleteReadError, httpx.HTTPError):
                    ok = False
                latencies.append(time.perf_counter() - started)
                failures += not ok
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies, failures, time.perf_counter() - started


def batch_counts(url: str) -> tuple[float, float]:
    """(requests, model calls) the text-search batcher has seen so far."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for name in ("sum", "count"):
            if line.startswith(f'polymodal_batch_size_{name}{{batcher="search_text"}} '):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", default="runs/quickstart", help="quickstart output to serve (default)")
    parser.add_argument("--index", help="serve this index instead of the quickstart's")
    parser.add_argument("--checkpoint", help="with --index: the model embedding the queries")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=32, help="unmeasured requests before each level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("-k", type=int, default=12, help="results per search (the page's default)")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                        help="load generator: a minimal keep-alive HTTP/1.1 client (default) or httpx")
    parser.add_argument("--batch-wait-ms", dest="batch_wait_ms", type=float, default=10.0,
                        help="the server's --batch-wait-ms (default: its own default)")
    parser.add_argument("--server-threads", dest="server_threads", type=int,
                        help="the server's --threads (default: its own, half the cores)")
    parser.add_argument("--startup-timeout", dest="startup_timeout", type=float, default=600)
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                        help="what embeds the queries, one server after the other: the PyTorch model, and "
                             "onnxruntime on its export (serve --onnx, exported here to a temporary folder)")
    parser.add_argument("--out", help="also write OUT/serve_load.md and OUT/serve_load.json")
    parser.set_defaults(threads=None)  # report_setup's torch threads: this process only sends requests
    args = parser.parse_args()
    out, command = start_report(args, __file__) if args.out else (None, "")

    header = ("| queries embedded by | concurrent clients | requests | failed | requests/s | p50 ms | p90 ms | "
              "p99 ms | requests per model call |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        for runtime in args.runtimes:
            onnx = export_onnx_of(args, Path(scratch) / "onnx") if runtime == "onnxruntime" else None
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = start_server(args, port, onnx)
            try:
                health = wait_ready(url, server, args.startup_timeout)
                if not rows:
                    print(f"index of {health['index_size']} images; {args.requests} text searches (k={args.k}) per "
                          "level", flush=True)
                    print(header + "\n" + rule, flush=True)
                for concurrency in args.concurrency:
                    asyncio.run(fire(url, args.warmup, concurrency, args.k, args.client))
                    batched_before, calls_before = batch_counts(url)
                    latencies, failures, wall = asyncio.run(fire(url, args.requests, concurrency, args.k, args.client))
                    batched_after, calls_after = batch_counts(url)
                    milliseconds = np.array(latencies) * 1000
                    row = {"runtime": runtime, "concurrency": concurrency, "requests": len(latencies),
                           "failed": failures, "requests_per_s": round(len(latencies) / wall, 1),
                           "p50_ms": round(float(np.percentile(milliseconds, 50)), 1),
                           "p90_ms": round(float(np.percentile(milliseconds, 90)), 1),
                           "p99_ms": round(float(np.percentile(milliseconds, 99)), 1),
                           "requests_per_model_call": round((batched_after - batched_before)
                                                            / max(calls_after - calls_before, 1), 2)}
                    rows.append(row)
                    print("| " + " | ".join(str(value) for value in row.values()) + " |", flush=True)
            finally:
                server.terminate()
                server.wait(30)
    load_after = os.getloadavg()

    if out is not None:
        setup = (f"{processor_name()}, {os.cpu_count()} cores; server and {args.client} clients on the same machine; "
                 f"server --threads {args.server_threads or 'default (half the cores)'}, batch wait "
                 f"{args.batch_wait_ms} ms; "
                 f"index of {health['index_size']} images; load average before {load_before[0]:.1f}, after "
                 f"{load_after[0]:.1f} (other processes on the machine count in it)")
        lines = [f"### `polymodal serve` under load: text search, k={args.k}", "", setup, "", header, rule]
        lines += ["| " + " | ".join(str(value) for value in row.values()) + " |" for row in rows]
        lines += ["", f"Made by `{command}`.", ""]
        (out / "serve_load.md").write_text("\n".join(lines), encoding="utf-8")
        report = {"command": command, "setup": setup, "index_size": health["index_size"], "k": args.k,
                  "load_average": {"before": load_before, "after": load_after}, "rows": rows}
        (out / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
