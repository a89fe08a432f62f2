"""Which S3 client for results in an object store: import time and CPU per object.

    python bench/bench_s3_client.py [--n 300] [--size 4000] [--repeat 5]

Candidates: obstore (Rust's object_store; what scanfleet uses), boto3 (botocore) and
minio. A moto S3 server runs in a process of its own on a free loopback port, so the CPU
measured is the client's alone. For each client, in a fresh interpreter:

- import: wall time of `import <client>` (best of --repeat fresh interpreters), which the
  CLI pays at start-up when results are in an object store (`status`, `report`, ...);
- client: wall time to build one client (boto3 loads its service model here);
- put/get/list: process CPU time per object (user + system, every thread of the client
  process: obstore's runtime threads count) for N JSON objects of --size bytes, written
  one whole PUT each, read back one GET each, then listed under their prefix;
  and the wall time per object (loopback, so mostly client overhead too).

The figures and the choice are in docs/operations.md ("Results in an object store").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CLIENTS = ("obstore", "boto3", "minio")

CHILD = r"""
import json, os, sys, time
client, endpoint, bucket = sys.argv[1:4]
n, size = int(sys.argv[4]), int(sys.argv[5])
body = json.dumps({"pad": "x" * size}).encode()
t0 = time.perf_counter()
if client == "obstore":
    import obstore
    from obstore.store import S3Store
elif client == "boto3":
    import boto3
else:
    import io
    import minio
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
if client == "obstore":
    s = S3Store(bucket, prefix=client, config={"endpoint": endpoint},
                client_options={"allow_http": True})
    put = lambda k: obstore.put(s, k, body, use_multipart=False)
    get = lambda k: bytes(obstore.get(s, k).bytes())
    lst = lambda: [m for b in obstore.list(s, "run/", chunk_size=1000) for m in b]
elif client == "boto3":
    c = boto3.client("s3", endpoint_url=endpoint)
    put = lambda k: c.put_object(Bucket=bucket, Key=f"{client}/{k}", Body=body)
    get = lambda k: c.get_object(Bucket=bucket, Key=f"{client}/{k}")["Body"].read()
    lst = lambda: [o for p in c.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{client}/run/") for o in p.get("Contents", [])]
else:
    host = endpoint.removeprefix("http://")
    c = minio.Minio(host, access_key=os.environ["AWS_ACCESS_KEY_ID"],
                    secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], secure=False,
                    region="us-east-1")
    put = lambda k: c.put_object(bucket, f"{client}/{k}", io.BytesIO(body), len(body))
    def get(k):
        r = c.get_object(bucket, f"{client}/{k}")
        try:
            return r.read()
        finally:
            r.close(); r.release_conn()
    lst = lambda: list(c.list_objects(bucket, prefix=f"{client}/run/", recursive=True))
t_client = time.perf_counter() - t0
put("warm"); get("warm")
out = {"import_s": t_import, "client_s": t_client}
for name, fn in (("put", lambda: [put(f"run/{i}.json") for i in range(n)]),
                 ("get", lambda: [get(f"run/{i}.json") for i in range(n)])):
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    out[name + "_cpu_ms"] = (time.process_time() - c0) / n * 1000
    out[name + "_wall_ms"] = (time.perf_counter() - w0) / n * 1000
c0 = time.process_time()
found = lst()
assert len(found) == n, (client, len(found))
out["list_cpu_ms"] = (time.process_time() - c0) / n * 1000
print(json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _best(code: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def import_time(client: str, repeat: int) -> float:
    """Best of `repeat` fresh interpreters importing `client`, less the best bare one."""
    return max(0.0, _best(f"import {client}", repeat) - _best("pass", repeat))


def read_ahead_figures(endpoint: str, bucket: str, n: int) -> tuple[float, float]:
    """Wall time to read n summaries one GET at a time, and through read_many."""
    from scanfleet.store.s3results import S3Results

    store = S3Results(bucket, "readahead", endpoint=endpoint, timeout=30)
    run = "20250101T000000Z-abcdef"
    names = [f"s{i:05}.json" for i in range(n)]
    for name in names:
        store.write_json(run, name, {"scan_id": name, "pad": "x" * 4000})
    t0 = time.perf_counter()
    for name in names:
        store.read_bytes(run, name)
    seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = list(store.read_many(run, names))
    ahead = time.perf_counter() - t0
    assert len(got) == n
    return seq, ahead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="objects per operation")
    ap.add_argument("--size", type=int, default=4000, help="bytes per object (a summary)")
    ap.add_argument("--repeat", type=int, default=5, help="fresh interpreters for import time")
    args = ap.parse_args()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        bucket = "bench-results"
        req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
        urllib.request.urlopen(req, timeout=5).close()
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        readahead = read_ahead_figures(endpoint, bucket, args.n)
        rows = []
        with tempfile.TemporaryDirectory():
            for client in CLIENTS:
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CHILD,
                        client,
                        endpoint,
                        bucket,
                        str(args.n),
                        str(args.size),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    print(f"{client}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["import_best_s"] = import_time(client, args.repeat)
                rows.append((client, r))
    finally:
        server.terminate()
        server.wait(10)
    print(f"S3 clients against moto on loopback: {args.n} objects of {args.size} B")
    print(
        f"{'client':<9} {'import ms':>9} {'client ms':>9} {'put CPU ms':>10} "
        f"{'put wall ms':>11} {'get CPU ms':>10} {'get wall ms':>11} {'list CPU ms':>11}"
    )
    for client, r in rows:
        print(
            f"{client:<9} {r['import_best_s'] * 1000:>9.1f} {r['client_s'] * 1000:>9.1f} "
            f"{r['put_cpu_ms']:>10.2f} {r['put_wall_ms']:>11.2f} {r['get_cpu_ms']:>10.2f} "
            f"{r['get_wall_ms']:>11.2f} {r['list_cpu_ms']:>11.3f}"
        )
    print("(CPU per object: the client process only, every thread; the server runs apart)")
    seq, ahead = readahead
    print(
        f"scanfleet's S3Results reading {args.n} summaries of a run: one GET after the other "
        f"{seq:.2f} s, read_many (read-ahead) {ahead:.2f} s"
    )


if __name__ == "__main__":
    main()
