"""Scans waiting for an in-flight slot: parked in Redis, started when a slot is freed.

A scan whose cluster already runs ``max_inflight`` scan Jobs is not retried
on a timer (300 waiting scans retried every second are hundreds of broker
messages a second, competing with the collects that would free the slots).
Its task parks it and returns; whoever frees a slot (a collect, a sweep, a
failed submit) starts the next waiting scan by publishing its task once (a
worker's collect task submits it itself instead: ``ScanContext.publish``). A burst of
N scans costs at most 2 scan-task messages per scan, however long each one
waits. The periodic pass renews the digest claims of waiting scans
(``refresh_inflight``), so that a long wait does not let the watcher publish
the digest again.

Per cluster ``c``, in Redis:

``scanqueue:pending:<c>:req``       hash: scan id -> the scan task's kwargs (JSON)
``scanqueue:pending:<c>:ns``        list: namespaces that have waiting scans, in turn
``scanqueue:pending:<c>:ns:<ns>``   sorted set: the waiting scan ids of one namespace,
                                    by first seen
``scanqueue:pending:<c>:started``   sorted set: scan ids handed to a publisher, by when
``scanqueue:pending:<c>:inflight-refreshed``  marker: the waiting scans' claims were renewed
                                    (``refresh_inflight``) less than a while ago

Order: first seen within a namespace, namespaces in turn (a namespace with a
thousand images does not starve one with a single image). Starting a scan
reserves its slot (``reserved:<scan id>`` in the cluster's Job slot set) in
the same script that pops it, so a newly arriving scan cannot take the slot
from under it; the scan's task turns the reservation into its Job's slot. The
popped entry stays in ``started`` until that task arrives: if the publisher
died between pop and publish, the safety net (``restart_stale``, run by the
periodic collect pass) publishes it again, and the task is idempotent.

It must never drop a waiting scan, nor let more Jobs than ``max_inflight``
hold slots. Only scan ids, namespaces and task payloads (references, never a
credential) are stored. The scripts build key names, so a single Redis, not
Redis Cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import redis

from scanqueue import dedupe, errors

log = logging.getLogger(__name__)

_T = TypeVar("_T")
RESERVED = "reserved:"

# KEYS: jobs, ns list, ns zset, req, started
# ARGV: job, limit, now, min score, scan id, namespace, payload
_TAKE_OR_PARK = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local reserved = 'reserved:' .. ARGV[5]
redis.call('ZREM', KEYS[5], ARGV[5])
local taken = redis.call('ZSCORE', KEYS[1], ARGV[1])
local mine = redis.call('ZSCORE', KEYS[1], reserved)
if taken or mine or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], reserved)
  if not taken then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
  redis.call('HDEL', KEYS[4], ARGV[5])
  redis.call('ZREM', KEYS[3], ARGV[5])
  return 1
end
redis.call('HSET', KEYS[4], ARGV[5], ARGV[7])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[5])
if not redis.call('LPOS', KEYS[2], ARGV[6]) then redis.call('RPUSH', KEYS[2], ARGV[6]) end
return 0
"""

# KEYS: jobs, ns list, req, started
# ARGV: limit, now, min score, most to start, ns zset prefix, a Job whose slot is freed first
_START = """
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[1], ARGV[6]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local out = {}
local limit, most = tonumber(ARGV[1]), tonumber(ARGV[4])
while #out < most and redis.call('ZCARD', KEYS[1]) < limit do
  local ns = redis.call('LPOP', KEYS[2])
  if not ns then break end
  local zset = ARGV[5] .. ns
  local first = redis.call('ZRANGE', zset, 0, 0)
  if #first > 0 then
    local id = first[1]
    redis.call('ZREM', zset, id)
    if redis.call('ZCARD', zset) > 0 then redis.call('RPUSH', KEYS[2], ns) end
    local payload = redis.call('HGET', KEYS[3], id)
    if payload then
      redis.call('ZADD', KEYS[1], ARGV[2], 'reserved:' .. id)
      redis.call('ZADD', KEYS[4], ARGV[2], id)
      out[#out + 1] = payload
    end
  end
end
return out
"""

# KEYS: req, started, jobs; ARGV: older than, now
_STALE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local out = {}
for _, id in ipairs(ids) do
  local payload = redis.call('HGET', KEYS[1], id)
  if payload then
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    redis.call('ZADD', KEYS[3], 'XX', ARGV[2], 'reserved:' .. id)
    out[#out + 1] = payload
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"""


# KEYS: req, marker; ARGV: ttl, every, cluster. Keys named here: a single Redis, as above.
_REFRESH_INFLIGHT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return -1 end
local n = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local ok, payload = pcall(cjson.decode, entries[i + 1])
  local request = ok and type(payload) == 'table' and payload['request']
  local digest = type(request) == 'table' and request['digest']
  if type(digest) == 'string' and digest ~= '' then
    local key = 'scanqueue:inflight:' .. digest
    local mine = ARGV[3] .. '/' .. entries[i]
    local holder = redis.call('GET', key)
    if holder == mine then
      redis.call('EXPIRE', key, ARGV[1])
      n = n + 1
    elseif not holder and redis.call('EXISTS', 'scanqueue:fresh:' .. digest) == 0 then
      redis.call('SET', key, mine, 'EX', ARGV[1])
      n = n + 1
    end
  end
end
return n
"""


def _key(cluster: str, what: str) -> str:
    return f"{dedupe.PREFIX}pending:{cluster}:{what}"


def _ns_prefix(cluster: str) -> str:
    return _key(cluster, "ns:")


def take_or_park(
    conn: redis.Redis,
    *,
    cluster: str,
    job: str,
    limit: int,
    now: float,
    max_age: float,
    scan_id: str,
    namespace: str,
    payload: Mapping[str, Any],
) -> bool:
    """Admit Job ``job`` under ``limit`` (True), or park the scan's ``payload`` (False).

    One atomic script: a Job that holds a slot keeps it, a scan started from
    the pending set turns its reservation into its Job's slot, a free slot is
    taken; otherwise the scan waits, first seen first within its namespace.
    Slots older than ``max_age`` (no Job lives that long) are dropped first.
    """
    keys = [
        dedupe.jobs_key(cluster),
        _key(cluster, "ns"),
        _ns_prefix(cluster) + namespace,
        _key(cluster, "req"),
        _key(cluster, "started"),
    ]
    argv: list[str | int | float] = [
        job, int(limit), now, now - max_age, scan_id, namespace, json.dumps(payload)
    ]  # fmt: skip
    result = _call(lambda: conn.eval(_TAKE_OR_PARK, len(keys), *keys, *argv), "take a slot")
    return bool(result)


def start(
    conn: redis.Redis,
    *,
    cluster: str,
    limit: int,
    now: float,
    max_age: float,
    most: int = 64,
    freeing: str = "",
) -> list[dict[str, Any]]:
    """Pop waiting scans while slots are free, reserving one slot each; return their payloads.

    The caller publishes one scan task per payload. At most ``most`` per call.
    ``freeing``: a Job whose slot is given back first, in the same script (a collect's
    Job: one Redis round trip for both).
    """
    keys = [dedupe.jobs_key(cluster), _key(cluster, "ns"), _key(cluster, "req"),
            _key(cluster, "started")]  # fmt: skip
    argv: list[str | int | float] = [
        int(limit), now, now - max_age, int(most), _ns_prefix(cluster), freeing
    ]  # fmt: skip
    found = _call(lambda: conn.eval(_START, len(keys), *keys, *argv), "start waiting scans")
    return [json.loads(p) for p in cast(list[str], found)]


def restart_stale(
    conn: redis.Redis, *, cluster: str, now: float, older_than: float
) -> list[dict[str, Any]]:
    """Payloads of scans started more than ``older_than`` seconds ago whose task never came.

    Their start time is renewed; the caller publishes them again (the scan task
    is idempotent, so a slow first message does no harm).
    """
    keys = [_key(cluster, "req"), _key(cluster, "started"), dedupe.jobs_key(cluster)]
    found = _call(lambda: conn.eval(_STALE, len(keys), *keys, now - older_than, now), "restart")
    return [json.loads(p) for p in cast(list[str], found)]


def refresh_inflight(
    conn: redis.Redis, *, cluster: str, ttl_seconds: int, every_seconds: int
) -> int | None:
    """Keep the in-flight keys of the scans waiting here from expiring; how many, or None
    when it was done less than ``every_seconds`` ago (by anyone: a marker key in Redis).

    The watcher claims a digest for ``ttl_seconds`` (``scan.inflight_ttl_seconds``)
    and the scan's submit renews it. A scan that waits for a slot longer than that
    would lose its claim, and the watcher would claim and publish the digest again:
    two scans of one digest. So the periodic pass renews the claim of every waiting
    scan that still holds it, and takes it again for one whose claim is gone (Redis
    lost it) unless the digest was scanned meanwhile. A claim another scan holds is
    left alone. ``every_seconds`` must be well under ``ttl_seconds``.
    """
    keys = [_key(cluster, "req"), _key(cluster, "inflight-refreshed")]
    found = _call(
        lambda: conn.eval(
            _REFRESH_INFLIGHT, len(keys), *keys, int(ttl_seconds), max(1, int(every_seconds)),
            cluster,
        ),
        "refresh the claims of waiting scans",
    )  # fmt: skip
    count = int(cast(int, found))
    return None if count < 0 else count


def forget(conn: redis.Redis, *, cluster: str, scan_id: str, namespace: str) -> None:
    """Drop every trace of ``scan_id`` here: it ended before taking a slot."""
    pipe = conn.pipeline(transaction=True)
    pipe.hdel(_key(cluster, "req"), scan_id)
    pipe.zrem(_key(cluster, "started"), scan_id)
    pipe.zrem(_ns_prefix(cluster) + namespace, scan_id)
    pipe.zrem(dedupe.jobs_key(cluster), RESERVED + scan_id)
    _call(pipe.execute, "forget a waiting scan")


def waiting(conn: redis.Redis, *, cluster: str) -> int:
    """Scans of ``cluster`` waiting for a slot (parked, not yet started)."""
    pipe = conn.pipeline(transaction=False)
    pipe.hlen(_key(cluster, "req"))
    pipe.zcard(_key(cluster, "started"))
    parked, started = _call(pipe.execute, f"count waiting scans of {cluster}")
    return max(0, int(parked) - int(started))


def oldest_waiting(conn: redis.Redis, *, cluster: str, now: float) -> float | None:
    """Seconds the longest-waiting scan of ``cluster`` has waited, or None."""
    namespaces = cast(
        list[str], _call(lambda: conn.lrange(_key(cluster, "ns"), 0, -1), "list namespaces")
    )
    pipe = conn.pipeline(transaction=False)
    for namespace in namespaces:
        pipe.zrange(_ns_prefix(cluster) + namespace, 0, 0, withscores=True)
    firsts = cast(list[list[tuple[str, float]]], _call(pipe.execute, "read waiting scans"))
    oldest: float | None = None
    for first in firsts:
        if first:
            seen = float(first[0][1])
            oldest = seen if oldest is None else min(oldest, seen)
    return None if oldest is None else max(0.0, now - oldest)


def _call(operation: Callable[[], _T], what: str) -> _T:
    try:
        return operation()
    except redis.RedisError as e:
        raise errors.TemporaryError(f"Redis: cannot {what}: {e}") from e
