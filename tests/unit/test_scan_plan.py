"""The scan plan: which credential (or anonymous pull, or node mode) each attempt uses."""

from __future__ import annotations

from scanqueue import credentials, scans

A = credentials.Credential(registry="r.example.com", username="a", password="pa", source="ns/one")
B = credentials.Credential(registry="r.example.com", username="b", password="pb", source="ns/two")


def _step(start: int, *, mode: str = "auto", anonymous: bool = True, node: str | None = "n1"):
    return scans.plan_step(
        candidates=[A, B], start=start, scan_mode=mode, allow_anonymous=anonymous, node_name=node
    )


def test_candidates_are_tried_one_at_a_time_in_order() -> None:
    first, second = _step(0), _step(1)
    assert (first.mode, first.credential) == ("registry", A)
    assert (second.mode, second.credential) == ("registry", B)
    assert scans.next_start(first.index) == second.index


def test_after_every_candidate_comes_anonymous_then_node_mode() -> None:
    anonymous = _step(2)
    assert (anonymous.mode, anonymous.credential) == ("registry", None)
    node = _step(scans.next_start(anonymous.index))
    assert (node.mode, node.credential) == ("node", None)
    assert _step(scans.next_start(node.index)) is None


def test_anonymous_is_skipped_when_not_allowed() -> None:
    assert _step(2, anonymous=False).mode == "node"


def test_registry_mode_never_falls_back_to_node_mode() -> None:
    assert _step(2, mode="registry", anonymous=False) is None
    assert _step(3, mode="registry") is None


def test_node_mode_needs_the_node_the_workload_runs_on() -> None:
    assert _step(3, node=None) is None
    assert _step(0, mode="node", node=None) is None


def test_node_scan_mode_goes_straight_to_node_mode_without_credentials() -> None:
    step = _step(0, mode="node")
    assert (step.mode, step.credential, step.source) == ("node", None, "node")


def test_step_source_names_secret_and_registry_never_the_password() -> None:
    source = _step(0).source
    assert source == "ns/one (r.example.com)"
    assert "pa" not in source.split()
