"""The inventory the watcher keeps: containers per pod, gone when their pod is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scanqueue import store

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def row(
    pod: str,
    container: str = "app",
    *,
    cluster: str = "prod-eu",
    namespace: str = "team-a",
    kind: str = "Deployment",
    workload: str = "web",
    container_type: str = "app",
    image: str = "registry.example.com/team/web:1",
    digest: str | None = DIGEST_A,
    node: str | None = "node-1",
    at: datetime = T0,
) -> store.ContainerRow:
    return store.ContainerRow(
        cluster=cluster,
        namespace=namespace,
        workload_kind=kind,
        workload_name=workload,
        pod=pod,
        container=container,
        container_type=container_type,
        image=image,
        digest=digest,
        node=node,
        seen_at=at,
    )


def live(conn: store.Connection, cluster: str = "prod-eu") -> set[tuple[str, str, str]]:
    rows = conn.execute(
        """SELECT c.namespace, c.pod, c.container FROM containers c
             JOIN clusters cl ON cl.id = c.cluster_id
            WHERE cl.name = %s AND c.gone_at IS NULL""",
        (cluster,),
    ).fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def test_two_hundred_pods_in_forty_workloads_list_two_hundred_containers(
    store_conn: store.Connection,
) -> None:
    rows = [row(f"web-{w}-{p}", workload=f"web-{w}") for w in range(40) for p in range(5)]
    store.record_containers(store_conn, rows)
    assert len(live(store_conn)) == 200
    assert store_conn.execute("SELECT count(*) FROM workloads").fetchone() == (40,)
    assert store_conn.execute("SELECT count(*), sum(pods) FROM workload_images").fetchone() == (
        40,
        200,
    )


def test_seeing_a_container_again_keeps_first_seen_and_moves_last_seen(
    store_conn: store.Connection,
) -> None:
    store.record_containers(store_conn, [row("web-1", at=T0)])
    store.record_containers(
        store_conn, [row("web-1", at=T0 + timedelta(hours=1), digest=DIGEST_B, node="node-2")]
    )
    got = store_conn.execute(
        "SELECT first_seen, last_seen, digest, node FROM containers"
    ).fetchone()
    assert got == (T0, T0 + timedelta(hours=1), DIGEST_B, "node-2")


def test_unknown_digest_does_not_erase_the_known_one_of_the_same_image(
    store_conn: store.Connection,
) -> None:
    store.record_containers(store_conn, [row("web-1")])
    store.record_containers(store_conn, [row("web-1", digest=None, at=T0 + timedelta(1))])
    assert store_conn.execute("SELECT digest FROM containers").fetchone() == (DIGEST_A,)


def test_init_and_ephemeral_containers_are_recorded_with_their_type(
    store_conn: store.Connection,
) -> None:
    store.record_containers(
        store_conn,
        [
            row("web-1", "migrate", container_type="init"),
            row("web-1", "app"),
            row("web-1", "debugger", container_type="ephemeral", digest=None),
        ],
    )
    types = dict(store_conn.execute("SELECT container, container_type FROM containers").fetchall())
    assert types == {"migrate": "init", "app": "app", "debugger": "ephemeral"}


def test_same_container_twice_in_one_batch_keeps_the_latest_sighting(
    store_conn: store.Connection,
) -> None:
    store.record_containers(
        store_conn,
        [row("web-1", at=T0 + timedelta(1), digest=DIGEST_B), row("web-1", at=T0)],
    )
    assert store_conn.execute("SELECT digest, last_seen FROM containers").fetchone() == (
        DIGEST_B,
        T0 + timedelta(1),
    )


def test_forgotten_pods_are_gone_and_come_back_when_seen_again(
    store_conn: store.Connection,
) -> None:
    store.record_containers(store_conn, [row("web-1"), row("web-2"), row("web-1", "sidecar")])
    store.forget_pods(
        store_conn, cluster="prod-eu", namespace="team-a", pods=["web-1"], at=T0 + timedelta(1)
    )
    assert live(store_conn) == {("team-a", "web-2", "app")}
    # a stale sighting from before the deletion does not revive it
    store.record_containers(store_conn, [row("web-1", at=T0)])
    assert live(store_conn) == {("team-a", "web-2", "app")}
    # a StatefulSet pod re-created under the same name does
    store.record_containers(store_conn, [row("web-1", at=T0 + timedelta(2))])
    assert live(store_conn) == {("team-a", "web-2", "app"), ("team-a", "web-1", "app")}
    first_seen = store_conn.execute(
        "SELECT first_seen FROM containers WHERE pod = 'web-1' AND container = 'app'"
    ).fetchone()
    assert first_seen == (T0 + timedelta(2),)


def test_forget_pods_touches_only_that_cluster_and_namespace(
    store_conn: store.Connection,
) -> None:
    store.record_containers(
        store_conn,
        [row("web-1"), row("web-1", namespace="team-b"), row("web-1", cluster="prod-us")],
    )
    store.forget_pods(
        store_conn, cluster="prod-eu", namespace="team-a", pods=["web-1"], at=T0 + timedelta(1)
    )
    assert live(store_conn) == {("team-b", "web-1", "app")}
    assert live(store_conn, "prod-us") == {("team-a", "web-1", "app")}


def test_relist_marks_everything_not_listed_gone_in_that_cluster_only(
    store_conn: store.Connection,
) -> None:
    store.record_containers(
        store_conn,
        [row("web-1"), row("web-2"), row("db-0", workload="db", kind="StatefulSet"),
         row("web-1", cluster="prod-us")],
    )  # fmt: skip
    at = T0 + timedelta(hours=1)
    store.replace_cluster_inventory(
        store_conn, cluster="prod-eu", rows=[row("web-2", at=at), row("web-3", at=at)], at=at
    )
    assert live(store_conn) == {("team-a", "web-2", "app"), ("team-a", "web-3", "app")}
    assert live(store_conn, "prod-us") == {("team-a", "web-1", "app")}
    assert store_conn.execute("SELECT gone_at FROM containers WHERE pod = 'db-0'").fetchone() == (
        at,
    )


def test_relist_keeps_a_container_seen_after_the_list(store_conn: store.Connection) -> None:
    at = T0 + timedelta(hours=1)
    store.record_containers(store_conn, [row("web-9", at=at + timedelta(seconds=5))])
    store.replace_cluster_inventory(store_conn, cluster="prod-eu", rows=[], at=at)
    assert live(store_conn) == {("team-a", "web-9", "app")}


def test_empty_relist_of_a_new_cluster_creates_it(store_conn: store.Connection) -> None:
    store.replace_cluster_inventory(store_conn, cluster="empty", rows=[], at=T0)
    assert store_conn.execute("SELECT name FROM clusters").fetchall() == [("empty",)]
