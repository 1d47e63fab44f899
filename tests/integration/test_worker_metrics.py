"""Worker metrics against a real Redis: queue depth read at scrape time, never a failed scrape."""

from __future__ import annotations

import redis

from scanqueue import metrics


def _depths(collector: metrics.QueueDepth) -> dict[tuple[str, str], float]:
    family = next(iter(collector.collect()))
    return {(s.labels["cluster"], s.labels["queue"]): s.value for s in family.samples}


def test_queue_depth_counts_every_priority_list_of_each_cluster_queue(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.rpush("scan.alpha", "t1", "t2")
    client.rpush("scan.alpha\x06\x166", "t3")  # kombu's list for priority 6
    client.rpush("scan.beta\x06\x169", "t4")
    client.rpush("scanqueue.control", "other")
    collector = metrics.QueueDepth(client, {"alpha": "scan.alpha", "beta": "scan.beta",
                                            "gamma": "scan.gamma"})  # fmt: skip
    assert _depths(collector) == {
        ("alpha", "scan.alpha"): 3,
        ("beta", "scan.beta"): 1,
        ("gamma", "scan.gamma"): 0,
    }
    client.lpop("scan.alpha")
    assert _depths(collector)[("alpha", "scan.alpha")] == 2  # read again at each scrape
    client.close()


def test_queue_depth_of_an_unreachable_redis_is_no_sample_not_an_error() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    collector = metrics.QueueDepth(dead, {"alpha": "scan.alpha"})
    assert _depths(collector) == {}


def test_worker_registry_serves_queue_depth_with_the_worker_metrics(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.rpush("scan.alpha", "t1")
    served = metrics.worker_registry(client, {"alpha": "scan.alpha"})
    assert (
        served.get_sample_value(
            "scanqueue_queue_depth", {"cluster": "alpha", "queue": "scan.alpha"}
        )
        == 1
    )
    metrics.SCANS.labels("alpha", "succeeded").inc()
    assert served.get_sample_value(
        "scanqueue_scans_total", {"cluster": "alpha", "outcome": "succeeded"}
    ) == metrics.value("scanqueue_scans_total", cluster="alpha", outcome="succeeded")
    client.close()
