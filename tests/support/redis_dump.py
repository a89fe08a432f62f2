"""Everything a Redis holds, as text, to search for secrets; shared by the fleet tests."""

from __future__ import annotations

from typing import Any

import redis


def dump_redis(client: redis.Redis) -> str:
    """Every key and every value, as text."""
    out: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        out.append(f"{key} {value!r}")
    return "\n".join(out)
