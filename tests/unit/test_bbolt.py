"""The bbolt writer: what it writes reads back as the same tree (a reader written from
bbolt's page.go here), and the same tree always gives the same bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from scanqueue.sim import bbolt


def _fnv(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _page(data: bytes, pgid: int) -> tuple[int, int, int, int, bytes]:
    at = pgid * bbolt.PAGE_SIZE
    pid, flags, count, overflow = struct.unpack_from("<QHHI", data, at)
    body = data[at : at + (overflow + 1) * bbolt.PAGE_SIZE]
    return pid, flags, count, overflow, body


def _node(raw: bytes, data: bytes) -> dict[bytes, Any]:
    """Read the node in ``raw`` (a page's bytes, header first) into a tree."""
    _, flags, count, _ = struct.unpack_from("<QHHI", raw, 0)
    out: dict[bytes, Any] = {}
    for i in range(count):
        at = bbolt.PAGE_HEADER + i * bbolt.ELEMENT
        if flags == bbolt.LEAF_PAGE:
            eflags, pos, ksize, vsize = struct.unpack_from("<IIII", raw, at)
            key = raw[at + pos : at + pos + ksize]
            value = raw[at + pos + ksize : at + pos + ksize + vsize]
            out[key] = _bucket(value, data) if eflags & bbolt.BUCKET_LEAF_FLAG else value
        else:
            assert flags == bbolt.BRANCH_PAGE
            pos, ksize, child = struct.unpack_from("<IIQ", raw, at)
            sub = _tree(child, data)
            assert min(sub) == raw[at + pos : at + pos + ksize]
            out.update(sub)
    assert list(out) == sorted(out), "keys must be sorted bytewise"
    return out


def _tree(pgid: int, data: bytes) -> dict[bytes, Any]:
    pid, _, _, _, body = _page(data, pgid)
    assert pid == pgid
    return _node(body, data)


def _bucket(value: bytes, data: bytes) -> dict[bytes, Any]:
    root, _ = struct.unpack_from("<QQ", value, 0)
    if root == 0:
        return _node(value[bbolt.BUCKET_HEADER :], data)
    return _tree(root, data)


def read(data: bytes) -> dict[bytes, Any]:
    metas = []
    for pgid in (0, 1):
        pid, flags, _, _, _ = _page(data, pgid)
        assert (pid, flags) == (pgid, bbolt.META_PAGE)
        fields = data[pgid * bbolt.PAGE_SIZE + 16 : pgid * bbolt.PAGE_SIZE + 72]
        magic, version, size, _, root, _, freelist, high, txid = struct.unpack("<IIIIQQQQQ", fields)
        (checksum,) = struct.unpack_from("<Q", data, pgid * bbolt.PAGE_SIZE + 72)
        assert (magic, version, size, freelist) == (bbolt.MAGIC, 2, 4096, 2)
        assert checksum == _fnv(fields) and txid % 2 == pgid
        assert high * bbolt.PAGE_SIZE == len(data)
        metas.append((txid, root))
    _, root = max(metas)
    return _tree(root, data)


def test_small_nested_buckets_read_back() -> None:
    tree = {b"b": {b"k2": b"v2", b"k1": b"v1"}, b"a": {b"inner": {b"x": b"y"}}}
    assert read(bbolt.dumps(tree)) == {
        b"a": {b"inner": {b"x": b"y"}},
        b"b": {b"k1": b"v1", b"k2": b"v2"},
    }


def test_large_bucket_splits_into_leaves_under_branches() -> None:
    big = {f"CVE-2099-{i:05d}".encode(): b'{"Title":"' + b"x" * 60 + b'"}' for i in range(5000)}
    data = bbolt.dumps({b"vulnerability": big})
    assert read(data) == {b"vulnerability": big}
    flags = {struct.unpack_from("<QH", data, p * 4096)[1] for p in range(3, len(data) // 4096)}
    assert bbolt.BRANCH_PAGE in flags  # more than one leaf, so a branch level exists


def test_value_bigger_than_a_page_overflows() -> None:
    tree = {b"b": {b"big": b"z" * 10000, b"small": b"s"}}
    data = bbolt.dumps(tree)
    assert read(data) == tree
    pid, flags, count, overflow = struct.unpack_from("<QHHI", data, 3 * 4096)
    assert (pid, flags, count, overflow) == (3, bbolt.LEAF_PAGE, 1, 2)  # 10 kB: 3 pages


def test_inline_only_small_buckets_without_nested_ones() -> None:
    small = {b"p": {b"k": b"v"}}
    assert len(bbolt.dumps(small)) == 4 * 4096  # meta, meta, freelist, root leaf: p is inline
    large = {b"p": {b"k": b"v" * 2000}}
    assert len(bbolt.dumps(large)) == 5 * 4096  # over a quarter page: p gets its own page


def test_same_tree_same_bytes_whatever_the_insertion_order() -> None:
    one = {b"x": {b"2": b"b", b"1": b"a"}, b"y": {b"3": {b"4": b"c"}}}
    two = {b"y": {b"3": {b"4": b"c"}}, b"x": {b"1": b"a", b"2": b"b"}}
    assert bbolt.dumps(one) == bbolt.dumps(two)


def test_top_level_values_must_be_buckets() -> None:
    with pytest.raises(ValueError, match="only buckets at the top"):
        bbolt.dumps({b"k": b"v"})
    with pytest.raises(ValueError, match="non-empty bytes"):
        bbolt.dumps({b"k": {b"": b"v"}})
