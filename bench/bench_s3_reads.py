"""How many GETs in flight: reading a run's summaries from an endpoint with S3's latency.

    python bench/bench_s3_reads.py [--n 10000] [--latency-ms 20,50] [--in-flight 1,16,64,128]

Finalize, `report` and posture read every summary of a run (one GET each). moto, the S3
server of the other benchmarks, is one Python process that serves about 300 GETs a second
on this machine, so against it the server is the bound whatever the client does. This
benchmark stands in for S3 instead: an endpoint in a process of its own that answers
every GET after --latency-ms (S3's first-byte latency for a small object is tens of
milliseconds) and never queues a request behind another (S3 serves thousands of GETs a
second per prefix). It prints, per latency and per number of GETs in flight, the wall
time of `S3Results.read_many` over --n summaries of 3 KB and the reader's CPU time.
`--in-flight 1` at 10,000 summaries takes minutes (10,000 round trips): it is left out
by default.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanfleet.store.s3results import READ_THREADS, S3Results

RUN = "20261206T000000Z-abcdef"
SUMMARY = b'{"scan_id": "s", "status": "completed", "pad": "' + b"x" * 3000 + b'"}'


def serve(latency: float, ready: multiprocessing.Queue[int]) -> None:
    """Answer every request, on every keep-alive connection, after `latency` seconds."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f'Content-Length: {len(SUMMARY)}\r\nETag: "s"\r\n'
            "Last-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\n\r\n"
        ).encode()
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # a GET has no body
                await asyncio.sleep(latency)
                writer.write(head + SUMMARY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024)
        ready.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def read_all(endpoint: str, n: int, in_flight: int) -> tuple[float, float]:
    store = S3Results("bench", "runs", endpoint=endpoint, timeout=30, in_flight=in_flight)
    names = [f"s{i:05}.json" for i in range(n)]
    cpu, wall = time.process_time(), time.perf_counter()
    got = sum(1 for _name, body in store.read_many(RUN, names) if isinstance(body, bytes))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if got != n:
        raise SystemExit(f"read {got} of {n} summaries")
    return wall, cpu


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="summaries in the run")
    ap.add_argument("--latency-ms", type=ints, default=[20, 50])
    ap.add_argument("--in-flight", type=ints, default=[16, READ_THREADS, 128])
    args = ap.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_REGION="us-east-1"
    )
    print(f"read_many over {args.n} summaries of {len(SUMMARY)} B; scanfleet uses {READ_THREADS}")
    print(f"{'latency ms':>10} {'in flight':>9} {'wall s':>7} {'reader CPU s':>12} {'GETs/s':>7}")
    for latency in args.latency_ms:
        ready: multiprocessing.Queue[int] = multiprocessing.Queue()
        server = multiprocessing.Process(target=serve, args=(latency / 1000, ready), daemon=True)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{ready.get(timeout=30)}"
            for in_flight in args.in_flight:
                wall, cpu = read_all(endpoint, args.n, in_flight)
                print(
                    f"{latency:>10} {in_flight:>9} {wall:>7.2f} {cpu:>12.2f} {args.n / wall:>7.0f}"
                )
        finally:
            server.terminate()
            server.join(10)


if __name__ == "__main__":
    main()
