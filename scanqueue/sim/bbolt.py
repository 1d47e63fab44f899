"""A small, deterministic writer of bbolt files (the format of Trivy's ``trivy.db``).

Why it exists: the emulator's kubelet runs the real Trivy binary, and Trivy
reads its vulnerability database from a bbolt file. Tests need databases
holding exactly the advisories they plant, written offline, byte for byte the
same for the same input. bbolt has no Python binding, so this module writes the
format itself, following etcd-io/bbolt (page.go, node.go, bucket.go, db.go):

- 4096-byte pages; a page header is id u64, flags u16, count u16, overflow u32.
- pages 0 and 1 are meta pages (the one with the higher txid wins), page 2 an
  empty freelist, pages 3.. the B+trees: the root bucket, then each bucket.
- a leaf element is flags u32, pos u32, ksize u32, vsize u32, where ``pos``
  counts from the element's own address; a branch element is pos u32,
  ksize u32, pgid u64.
- a bucket's value is its 16-byte header (root pgid, sequence); root 0 means an
  inline bucket whose leaf page follows the header (bbolt's rule: a leaf with
  no nested bucket, at most a quarter of a page).

What it must never do: read or modify an existing file (it writes a new one
only), or depend on dict order, time or randomness (same tree, same bytes).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar, Union

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01

PAGE_HEADER = 16
ELEMENT = 16  # leaf and branch elements are both 16 bytes
BUCKET_HEADER = 16
MAX_INLINE = PAGE_SIZE // 4
MAX_KEYS_PER_PAGE = 0xFFFF

# A bucket: key -> value bytes, or key -> nested bucket.
Tree = Mapping[bytes, Union[bytes, "Tree"]]
T = TypeVar("T")


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _page_header(pgid: int, flags: int, count: int, overflow: int) -> bytes:
    return struct.pack("<QHHI", pgid, flags, count, overflow)


def _leaf_body(items: list[tuple[bytes, bytes, int]]) -> bytes:
    """Elements then keys and values of a leaf page (without the page header)."""
    heads = bytearray()
    data = bytearray()
    n = len(items)
    for i, (key, value, flags) in enumerate(items):
        element_at = i * ELEMENT
        pos = n * ELEMENT + len(data) - element_at
        heads += struct.pack("<IIII", flags, pos, len(key), len(value))
        data += key + value
    return bytes(heads + data)


def _branch_body(items: list[tuple[bytes, int]]) -> bytes:
    heads = bytearray()
    data = bytearray()
    n = len(items)
    for i, (key, pgid) in enumerate(items):
        pos = n * ELEMENT + len(data) - i * ELEMENT
        heads += struct.pack("<IIQ", pos, len(key), pgid)
        data += key
    return bytes(heads + data)


class _Writer:
    def __init__(self) -> None:
        self.pages: list[bytes] = []  # page-aligned chunks from page 3 on
        self.next_pgid = 3

    def _put(self, flags: int, count: int, body: bytes) -> int:
        size = PAGE_HEADER + len(body)
        npages = max(1, -(-size // PAGE_SIZE))
        pgid = self.next_pgid
        chunk = _page_header(pgid, flags, count, npages - 1) + body
        self.pages.append(chunk + b"\0" * (npages * PAGE_SIZE - len(chunk)))
        self.next_pgid += npages
        return pgid

    def bucket(self, tree: Tree) -> bytes:
        """Write the pages of ``tree`` and return its bucket value (header, maybe inline page)."""
        items: list[tuple[bytes, bytes, int]] = []
        nested = False
        for key in sorted(tree):
            if not isinstance(key, bytes) or not key:
                raise ValueError(f"bbolt keys must be non-empty bytes, not {key!r}")
            value = tree[key]
            if isinstance(value, bytes):
                items.append((key, value, 0))
            else:
                items.append((key, self.bucket(value), BUCKET_LEAF_FLAG))
                nested = True
        size = PAGE_HEADER + sum(ELEMENT + len(k) + len(v) for k, v, _ in items)
        if not nested and size <= MAX_INLINE:
            page = _page_header(0, LEAF_PAGE, len(items), 0) + _leaf_body(items)
            return struct.pack("<QQ", 0, 0) + page
        return struct.pack("<QQ", self.tree(items), 0)

    def tree(self, items: list[tuple[bytes, bytes, int]]) -> int:
        """Write leaves holding ``items`` (split near a page each) and branches; return the root."""
        level: list[tuple[bytes, int]] = []
        for chunk in _split(items, lambda item: ELEMENT + len(item[0]) + len(item[1])):
            level.append((chunk[0][0], self._put(LEAF_PAGE, len(chunk), _leaf_body(chunk))))
        while len(level) > 1:
            upper: list[tuple[bytes, int]] = []
            for chunk_b in _split(level, lambda item: ELEMENT + len(item[0])):
                upper.append(
                    (chunk_b[0][0], self._put(BRANCH_PAGE, len(chunk_b), _branch_body(chunk_b)))
                )
            level = upper
        if not level:  # an empty bucket is one empty leaf page
            return self._put(LEAF_PAGE, 0, b"")
        return level[0][1]


def _split(items: list[T], size_of: Callable[[T], int]) -> list[list[T]]:
    """Consecutive runs of ``items`` that fill at most one page (a single big item overflows)."""
    runs: list[list[T]] = []
    run: list[T] = []
    used = PAGE_HEADER
    for item in items:
        size = size_of(item)
        if run and (used + size > PAGE_SIZE or len(run) >= MAX_KEYS_PER_PAGE):
            runs.append(run)
            run, used = [], PAGE_HEADER
        run.append(item)
        used += size
    if run:
        runs.append(run)
    return runs


def _meta(pgid: int, root: int, high_water: int, txid: int) -> bytes:
    fields = struct.pack("<IIIIQQQQQ", MAGIC, VERSION, PAGE_SIZE, 0, root, 0, 2, high_water, txid)
    page = _page_header(pgid, META_PAGE, 0, 0) + fields + struct.pack("<Q", _fnv1a64(fields))
    return page + b"\0" * (PAGE_SIZE - len(page))


def dumps(tree: Tree) -> bytes:
    """Return the bytes of a bbolt file whose top-level buckets are ``tree``'s keys.

    Every top-level value must be a bucket (a mapping), as in bbolt. Raises
    ``ValueError`` for a key that is not non-empty bytes or a top-level
    value that is not a bucket.
    """
    writer = _Writer()
    top: list[tuple[bytes, bytes, int]] = []
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, bytes):
            raise ValueError(f"top-level key {key!r}: bbolt keeps only buckets at the top")
        top.append((key, writer.bucket(value), BUCKET_LEAF_FLAG))
    root = writer.tree(top)
    high_water = writer.next_pgid
    freelist = _page_header(2, FREELIST_PAGE, 0, 0)
    head = _meta(0, root, high_water, 0) + _meta(1, root, high_water, 1)
    head += freelist + b"\0" * (PAGE_SIZE - len(freelist))
    return head + b"".join(writer.pages)


def write(path: str | os.PathLike[str], tree: Tree) -> Path:
    """Write ``dumps(tree)`` to ``path`` (replaced atomically) and return the path."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(dumps(tree))
    os.replace(tmp, target)
    return target
