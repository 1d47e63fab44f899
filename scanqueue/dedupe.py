"""Farm-wide deduplication of scans, in Redis: one scan per image digest, whichever cluster.

A scan's result depends only on the image's content, so a digest is scanned
once, in whichever cluster first runs it, and that result serves every
cluster. Three kinds of keys, all with an expiry:

``scanqueue:fresh:<digest>``
    set by a worker when a scan succeeded, for the rescan interval;
``scanqueue:inflight:<digest>`` = ``<cluster>/<scan id>``
    set with ``SET NX`` by the watcher that publishes the scan task, expiring
    after ``scan.inflight_ttl_seconds`` so a lost scan is retried; released or
    refreshed by the worker;
``scanqueue:failed:<digest>:<cluster>``
    set by a worker when the scan could not be done *from this cluster* (no
    working credential there): this cluster does not try again until it
    expires, and another cluster running the digest gets its turn.

``scanqueue:jobs:<cluster>``
    a sorted set of the scan Jobs in flight in a cluster (member: Job name,
    score: when its slot was taken); ``take_job_slot`` admits a Job only
    below the cluster's ``max_inflight``, atomically, so two workers never
    both take the last slot. Slots older than a Job can live are pruned.

``claim`` checks and takes these atomically (one Lua script per batch), so two
watchers never both publish a digest. The scripts use key names they build
themselves, so they need a single Redis, not Redis Cluster.

Only digests, cluster names and scan ids are stored here: never a credential.
Nothing connects at import time; callers pass a ``redis.Redis`` client.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

import redis

from scanqueue import errors

PREFIX = "scanqueue:"
_BATCH = 500  # digests per script call: bounded work per Redis round trip

_T = TypeVar("_T")
Status = Literal["claimed", "fresh", "inflight", "failed-here"]

_CLAIM = """
local cluster, ttl = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 2 do
  local digest = ARGV[i]
  if redis.call('EXISTS', 'scanqueue:fresh:' .. digest) == 1 then
    out[#out + 1] = 'fresh'
  elseif redis.call('EXISTS', 'scanqueue:failed:' .. digest .. ':' .. cluster) == 1 then
    out[#out + 1] = 'failed-here'
  elseif redis.call('SET', 'scanqueue:inflight:' .. digest, cluster .. '/' .. ARGV[i + 1],
                    'NX', 'EX', ttl) then
    out[#out + 1] = 'claimed'
  else
    out[#out + 1] = 'inflight'
  end
end
return out
"""

# Delete or re-expire the in-flight key only while it still holds our value.
_RELEASE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Re-expire the in-flight key while the scan id after its last '/' is ours.
_REFRESH_IF_SCAN = """
local value = redis.call('GET', KEYS[1])
if value and string.match(value, '([^/]*)$') == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclasses.dataclass(frozen=True)
class Decision:
    """What ``claim`` decided for one digest; ``scan_id`` is set when it was claimed."""

    digest: str
    status: Status
    scan_id: str = ""


@dataclasses.dataclass(frozen=True)
class InFlight:
    """Who holds a digest's in-flight key, and for how much longer."""

    cluster: str
    scan_id: str
    ttl_seconds: int


def inflight_key(digest: str) -> str:
    return f"{PREFIX}inflight:{digest}"


def fresh_key(digest: str) -> str:
    return f"{PREFIX}fresh:{digest}"


def failed_key(digest: str, cluster: str) -> str:
    return f"{PREFIX}failed:{digest}:{cluster}"


SOCKET_TIMEOUT_SECONDS = 10.0  # longest wait for one Redis command or connection


def client(
    url: str, *, password: str | None = None, tls: Mapping[str, Any] | None = None
) -> redis.Redis:
    """A Redis client for ``url`` (strings decoded). Connects lazily, on the first command.

    ``password`` (``config.broker_password``) is passed apart from the URL, which then
    carries none. ``tls``: options from ``config.redis_tls`` for a ``rediss://`` URL.
    """
    # Timeouts: a command on a connection Redis will never answer (a restart caught
    # half-way) raises TimeoutError, a TemporaryError to callers, instead of hanging.
    return redis.Redis.from_url(
        url,
        password=password or None,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        **dict(tls or {}),
    )


def new_scan_id() -> str:
    """A fresh scan id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def claim(
    conn: redis.Redis,
    *,
    cluster: str,
    digests: Iterable[str],
    ttl_seconds: int,
) -> list[Decision]:
    """Try to take every digest for ``cluster``; return one ``Decision`` per digest, in order.

    A digest is claimed (in-flight key set to ``<cluster>/<new scan id>`` with
    ``ttl_seconds`` expiry) only when it is not fresh, has not failed in this
    cluster, and no scan of it is in flight anywhere. Raises ``TemporaryError``
    when Redis cannot be reached.
    """
    wanted = list(dict.fromkeys(digests))
    decisions: list[Decision] = []
    for start in range(0, len(wanted), _BATCH):
        batch = wanted[start : start + _BATCH]
        ids = [new_scan_id() for _ in batch]
        argv: list[str | int] = [cluster, int(ttl_seconds)]
        for digest, scan_id in zip(batch, ids, strict=True):
            argv += [digest, scan_id]
        result = _call(functools.partial(conn.eval, _CLAIM, 0, *argv), "claim digests")
        statuses = cast(Sequence[str], result)
        for digest, scan_id, status in zip(batch, ids, statuses, strict=True):
            decisions.append(
                Decision(digest, cast(Status, status), scan_id if status == "claimed" else "")
            )
    return decisions


def unsettled(conn: redis.Redis, *, cluster: str, digests: Sequence[str]) -> list[str]:
    """The digests Redis knows nothing about: not fresh, not in flight, not failed here.

    These are the ones worth checking against Postgres (``store.fresh_digests``)
    after Redis lost its keys, before ``claim``. One pipelined round trip.
    """
    if not digests:
        return []
    pipe = conn.pipeline(transaction=False)
    for digest in digests:
        pipe.exists(fresh_key(digest), inflight_key(digest), failed_key(digest, cluster))
    counts = _call(pipe.execute, "check digests")
    return [d for d, n in zip(digests, counts, strict=True) if not n]


def release(conn: redis.Redis, digest: str, *, scan_id: str | None = None) -> bool:
    """Drop the in-flight key of ``digest`` (only if it is ``scan_id``'s, when given).

    Call it when a scan ended without a result worth keeping, so the next
    watcher pass publishes the digest again. Returns True if a key was removed.
    """
    key = inflight_key(digest)
    if scan_id is None:
        return bool(_call(lambda: conn.delete(key), f"release {digest}"))
    value = _holder(conn, key)
    if value is None or value.rpartition("/")[2] != scan_id:
        return False
    return bool(_call(lambda: conn.eval(_RELEASE_IF, 1, key, value), f"release {digest}"))


def refresh(conn: redis.Redis, digest: str, *, scan_id: str, ttl_seconds: int) -> bool:
    """Extend the in-flight key of ``digest`` while ``scan_id`` holds it; False if it does not."""
    key = inflight_key(digest)
    ttl = int(ttl_seconds)
    return bool(_call(lambda: conn.eval(_REFRESH_IF_SCAN, 1, key, scan_id, ttl), "refresh"))


def refresh_claims(
    conn: redis.Redis,
    *,
    cluster: str,
    claims: Sequence[tuple[str, str]],
    ttl_seconds: int,
    every_seconds: int,
) -> int:
    """Extend the in-flight keys of ``claims`` ((digest, scan id), each while that scan holds
    it), at most once per ``every_seconds`` for ``cluster`` (a marker key); return how many
    were extended, or -1 when not due yet. One round trip for all of them."""
    marker = f"{PREFIX}claims-renewed:{cluster}"
    due = _call(lambda: conn.set(marker, "1", nx=True, ex=max(1, int(every_seconds))), "renew")
    if not due:
        return -1
    pipe = conn.pipeline(transaction=False)
    for digest, scan_id in claims:
        pipe.eval(_REFRESH_IF_SCAN, 1, inflight_key(digest), scan_id, int(ttl_seconds))
    return sum(int(n) for n in _call(pipe.execute, f"renew the claims of {cluster}'s scans"))


def mark_fresh(conn: redis.Redis, digest: str, *, ttl_seconds: int) -> None:
    """Record a successful scan of ``digest`` for ``ttl_seconds`` and drop its in-flight key."""
    pipe = conn.pipeline(transaction=True)
    pipe.set(fresh_key(digest), "1", ex=int(ttl_seconds))
    pipe.delete(inflight_key(digest))
    _call(pipe.execute, f"mark {digest} fresh")


def mark_many_fresh(conn: redis.Redis, digests: Iterable[str], *, ttl_seconds: int) -> None:
    """``mark_fresh`` without touching in-flight keys, for digests Postgres says are fresh."""
    pipe = conn.pipeline(transaction=False)
    for digest in digests:
        pipe.set(fresh_key(digest), "1", ex=int(ttl_seconds))
    _call(pipe.execute, "mark digests fresh")


def mark_failed_here(
    conn: redis.Redis,
    digest: str,
    *,
    cluster: str,
    ttl_seconds: int,
    scan_id: str | None = None,
) -> None:
    """``cluster`` could not scan ``digest``: don't retry there for ``ttl_seconds``.

    Also drops the in-flight key, so the next pass of another cluster's watcher
    that runs the digest claims it and tries with that cluster's credentials.
    With ``scan_id``, the key is dropped only while that scan holds it: a stale
    scan ending must not free a newer claim (another cluster's, say).
    """
    _call(
        lambda: conn.set(failed_key(digest, cluster), "1", ex=int(ttl_seconds)),
        f"mark {digest} failed in {cluster}",
    )
    if scan_id is None:
        _call(lambda: conn.delete(inflight_key(digest)), f"release {digest}")
    else:
        release(conn, digest, scan_id=scan_id)


def is_fresh(conn: redis.Redis, digest: str) -> bool:
    return bool(_call(lambda: conn.exists(fresh_key(digest)), f"read {digest}"))


def in_flight(conn: redis.Redis, digest: str) -> InFlight | None:
    """Who is scanning ``digest`` right now, or None."""
    key = inflight_key(digest)
    pipe = conn.pipeline(transaction=True)
    pipe.get(key)
    pipe.ttl(key)
    value, ttl = _call(pipe.execute, f"read {digest}")
    if value is None:
        return None
    cluster, _, scan_id = str(value).rpartition("/")
    return InFlight(cluster=cluster, scan_id=scan_id, ttl_seconds=int(ttl))


def failed_clusters(conn: redis.Redis, digest: str, clusters: Sequence[str]) -> list[str]:
    """Those of ``clusters`` where ``digest`` is marked failed."""
    if not clusters:
        return []
    pipe = conn.pipeline(transaction=False)
    for name in clusters:
        pipe.exists(failed_key(digest, name))
    found = _call(pipe.execute, f"read {digest}")
    return [name for name, n in zip(clusters, found, strict=True) if n]


_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


def jobs_key(cluster: str) -> str:
    return f"{PREFIX}jobs:{cluster}"


def take_job_slot(
    conn: redis.Redis, *, cluster: str, job: str, limit: int, now: float, max_age: float
) -> bool:
    """Admit scan Job ``job`` in ``cluster`` if fewer than ``limit`` are in flight; True if so.

    Atomic (one script), idempotent (a Job holding a slot keeps it), and
    self-healing: slots taken more than ``max_age`` seconds before ``now`` (a
    Job can live no longer than its deadline) are dropped first.
    """
    result = _call(
        lambda: conn.eval(_TAKE_SLOT, 1, jobs_key(cluster), job, int(limit), now, now - max_age),
        f"take a scan Job slot in {cluster}",
    )
    return bool(result)


def free_job_slot(conn: redis.Redis, *, cluster: str, job: str) -> None:
    """Give back the slot of ``job`` (collected, failed or swept)."""
    _call(lambda: conn.zrem(jobs_key(cluster), job), f"free a scan Job slot in {cluster}")


def move_job_slot(conn: redis.Redis, *, cluster: str, job: str, to: str, now: float) -> None:
    """Hand the slot of ``job`` (finished) to ``to`` (its next attempt), in one transaction."""
    pipe = conn.pipeline(transaction=True)
    pipe.zrem(jobs_key(cluster), job)
    pipe.zadd(jobs_key(cluster), {to: now})
    _call(pipe.execute, f"hand a scan Job slot over in {cluster}")


def collect_key(cluster: str, job: str) -> str:
    return f"{PREFIX}collecting:{cluster}:{job}"


def claim_collect(conn: redis.Redis, *, cluster: str, job: str, ttl_seconds: int) -> bool:
    """Claim the collect of finished scan Job ``job`` (SET NX): True for the one claimant.

    Kept after a collect (the Job is gone; a late duplicate finds the claim) until it
    expires; ``release_collect`` after a failure that leaves the Job for a later try.
    """
    key = collect_key(cluster, job)
    return bool(_call(lambda: conn.set(key, "1", nx=True, ex=int(ttl_seconds)), f"claim {job}"))


def release_collect(conn: redis.Redis, *, cluster: str, job: str) -> None:
    _call(lambda: conn.delete(collect_key(cluster, job)), f"release the collect of {job}")


def jobs_in_flight(conn: redis.Redis, *, cluster: str) -> int:
    return int(_call(lambda: conn.zcard(jobs_key(cluster)), f"count scan Jobs in {cluster}"))


def _holder(conn: redis.Redis, key: str) -> str | None:
    value = _call(lambda: conn.get(key), f"read {key}")
    return None if value is None else str(value)


def _call(operation: Callable[[], _T], what: str) -> _T:
    try:
        return operation()
    except redis.RedisError as e:
        raise errors.TemporaryError(f"Redis: cannot {what}: {e}") from e


# ---------------------------------------------------------------------- failure backoff
# ``scanqueue:failed:<digest>:<cluster>`` holds the failure's kind (``failures.Kind``;
# "1" from older workers) and expires when the cluster may try again;
# ``scanqueue:failures:<digest>:<cluster>`` counts failures in a row, for growing waits.


@dataclasses.dataclass(frozen=True)
class FailedMark:
    """A digest marked failed in a cluster: why, how many times in a row, for how much longer."""

    cluster: str
    kind: str  # a failures.Kind, or "" when an older worker set the mark
    in_a_row: int
    ttl_seconds: int


def failures_key(digest: str, cluster: str) -> str:
    return f"{PREFIX}failures:{digest}:{cluster}"


def mark_failed_backoff(
    conn: redis.Redis,
    digest: str,
    *,
    cluster: str,
    kind: str,
    scan_id: str | None,
    delay: Callable[[int], int],
    window_seconds: int,
) -> int:
    """Mark ``digest`` failed in ``cluster`` for ``delay(failures in a row)`` seconds.

    The count of failures in a row lives ``window_seconds`` past the last one
    (a success makes the digest fresh for longer, so the count is moot). The
    in-flight key is dropped as in ``mark_failed_here``. Returns the wait set.
    """
    counter = failures_key(digest, cluster)
    pipe = conn.pipeline(transaction=True)
    pipe.incr(counter)
    pipe.expire(counter, int(window_seconds))
    in_a_row = int(_call(pipe.execute, f"count failures of {digest} in {cluster}")[0])
    wait = int(delay(in_a_row))
    _call(
        lambda: conn.set(failed_key(digest, cluster), kind, ex=wait),
        f"mark {digest} failed in {cluster}",
    )
    if scan_id is None:
        _call(lambda: conn.delete(inflight_key(digest)), f"release {digest}")
    else:
        release(conn, digest, scan_id=scan_id)
    return wait


def failed_marks(conn: redis.Redis, digest: str, clusters: Sequence[str]) -> list[FailedMark]:
    """The failed-here marks of ``digest`` in ``clusters`` (those that have one)."""
    pipe = conn.pipeline(transaction=False)
    for name in clusters:
        pipe.get(failed_key(digest, name))
        pipe.ttl(failed_key(digest, name))
        pipe.get(failures_key(digest, name))
    values = _call(pipe.execute, f"read failures of {digest}")
    marks = []
    for i, name in enumerate(clusters):
        kind, ttl, count = values[3 * i : 3 * i + 3]
        if kind is None:
            continue
        marks.append(
            FailedMark(
                cluster=name,
                kind="" if kind == "1" else str(kind),
                in_a_row=int(count or 0),
                ttl_seconds=max(int(ttl), 0),
            )
        )
    return marks


_CLEAR_IF_KIND = """
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then n = n + redis.call('DEL', KEYS[i]) end
end
return n
"""


def clear_failed_of_kind(
    conn: redis.Redis, digests: Sequence[str], *, cluster: str, kind: str
) -> int:
    """Drop the failed-here marks of ``digests`` in ``cluster`` set for ``kind`` only.

    The watcher calls it with "credential" when a pod brings new pull secrets for
    a digest: a wait for a timeout or a bad report is left alone. Returns how many.
    """
    dropped = 0
    for start in range(0, len(digests), _BATCH):
        keys = [failed_key(d, cluster) for d in digests[start : start + _BATCH]]
        if keys:
            found = _call(
                lambda k=keys: conn.eval(_CLEAR_IF_KIND, len(k), *k, kind),  # type: ignore[misc]
                f"clear {kind} marks in {cluster}",
            )
            dropped += int(cast(int, found))
    return dropped


def failed_marks_of(
    conn: redis.Redis, pairs: Sequence[tuple[str, str]]
) -> list[tuple[str, FailedMark]]:
    """(digest, mark) for each (cluster, digest) of ``pairs`` that has a mark; pipelined in
    batches, so that a rescan of thousands of digests costs a few round trips."""
    found: list[tuple[str, FailedMark]] = []
    for start in range(0, len(pairs), _BATCH):
        batch = pairs[start : start + _BATCH]
        pipe = conn.pipeline(transaction=False)
        for cluster, digest in batch:
            pipe.get(failed_key(digest, cluster))
            pipe.ttl(failed_key(digest, cluster))
            pipe.get(failures_key(digest, cluster))
        values = _call(pipe.execute, "read failed marks")
        for i, (cluster, digest) in enumerate(batch):
            kind, ttl, count = values[3 * i : 3 * i + 3]
            if kind is not None:
                mark = FailedMark(cluster, "" if kind == "1" else str(kind), int(count or 0),
                                  max(int(ttl), 0))  # fmt: skip
                found.append((digest, mark))
    return found


def clear_marks(conn: redis.Redis, pairs: Sequence[tuple[str, str]], *, fresh: bool = False) -> int:
    """Drop the failed marks (and counts) of each (cluster, digest); with ``fresh`` also the
    digests' fresh keys. In-flight keys are left alone. Returns how many marks went."""
    dropped = 0
    for start in range(0, len(pairs), _BATCH):
        batch = pairs[start : start + _BATCH]
        pipe = conn.pipeline(transaction=False)
        for cluster, digest in batch:
            pipe.delete(failed_key(digest, cluster))
            pipe.delete(failures_key(digest, cluster))
        results = _call(pipe.execute, "clear failed marks")
        dropped += sum(int(n) for n in results[::2])
        if fresh:
            keys = sorted({fresh_key(d) for _, d in batch})
            _call(functools.partial(conn.delete, *keys), "forget fresh scans")
    return dropped


def forget_fresh(conn: redis.Redis, digest: str) -> None:
    """Drop the fresh mark of ``digest`` (a full scan was asked for): the watchers check it
    against Postgres at their next look and publish it. In-flight keys are left alone."""
    _call(lambda: conn.delete(fresh_key(digest)), f"forget {digest} fresh")
