"""Hostile inputs for the budget tests and `bench/bench_budgets.py`: archives and reports
that are small to send and expensive to read.

    tar_of_empty_entries(n)   a .tar.gz of n empty files (400,000: about 2.5 MB)
    zip_of_empty_entries(n)   a .zip of n empty files
    tar_of_long_names(n, k)   a pax .tar.gz of n empty files with k-byte names
    tar_with_huge_header(n)   a .tar.gz whose first entry is an n-byte pax header (zeros)
    deep_report(depth)        exec-JSON whose first control nests `depth` lists deep
    big_report(size)          valid exec-JSON of about `size` bytes (one control, padded)
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
import zlib


def tar_of_empty_entries(n: int) -> bytes:
    # One header built by tarfile, then copied with the name and checksum patched: tarfile
    # itself takes about 10 s for 400,000 entries.
    template = tarfile.TarInfo("x" * 7)
    template.mtime, template.mode = 0, 0o644
    header = bytearray(template.tobuf(format=tarfile.USTAR_FORMAT))
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    base = sum(header) - sum(b"x" * 7)
    out = bytearray()
    for i in range(n):
        name = b"%07d" % i
        header[0:7] = name
        header[148:156] = b"%06o\0 " % (base + sum(name))
        out += header
    out += bytes(1024)
    return gzip.compress(bytes(out), compresslevel=6, mtime=0)


def zip_of_empty_entries(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("inspec.yml", "name: p\n")
        for i in range(n):
            z.writestr(f"{i:07d}", b"")
    return buf.getvalue()


def tar_of_long_names(n: int, length: int) -> bytes:
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_info("inspec.yml", 8), io.BytesIO(b"name: p\n"))
        for i in range(n):
            tar.addfile(_info(f"{i:04d}" + "n" * length, 0), io.BytesIO(b""))
    return buf.getvalue()


def tar_with_huge_header(size: int) -> bytes:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size, header.mtime = tarfile.XHDTYPE, size, 0
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip stream
    out = [gz.compress(header.tobuf(format=tarfile.USTAR_FORMAT))]
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        out.append(gz.compress(chunk))
    out.append(gz.compress(bytes(size % (1 << 20) + 1024)))
    out.append(gz.flush())
    return b"".join(out)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def deep_report(depth: int) -> bytes:
    control = '{"id": "deep", "impact": 0.5, "results": [], "tags": {"x": '
    return (
        '{"profiles": [{"name": "p", "controls": [' + control + "[" * depth + "]" * depth + "}}]}]}"
    ).encode()


def big_report(size: int) -> bytes:
    control = {"id": "big", "impact": 0.5, "tags": {}, "results": [{"status": "passed"}]}
    head = json.dumps({"profiles": [{"name": "p", "controls": [control]}], "pad": ""})
    pad = max(0, size - len(head))
    return (head[:-2] + "x" * pad + '"}').encode()
