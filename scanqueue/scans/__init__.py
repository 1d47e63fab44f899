"""Scan orchestration: submit one scan Job with one credential, collect it, sweep leftovers.

The Celery tasks in ``workers/`` are thin wrappers around ``submit``,
``collect`` and ``sweep``; everything they decide is in this package, with its
collaborators passed in a ``ScanContext``. One module per job:

- ``model``: ``ScanContext``, ``Step``, ``Result``, the scan Job annotations;
- ``plan``: which credential a scan pulls with (kubelet order, one at a time);
- ``submission``: create the Job suspended, its Secret owned by it, resume;
- ``collection``: store finished Jobs' reports, or hand the scan to the next candidate;
- ``sweeping``: delete what outlived its deadline, fail lost scans;
- ``ending``: end a scan without a result, delete a Job, free its slot for a waiting scan;
- ``pending``: scans waiting for an in-flight slot (Redis), started when one is freed.

It must never:

- merge credentials: a scan Job gets one candidate at a time, in kubelet
  order; a refused one moves the scan to the next candidate (a new Job,
  attempt + 1), never to a set;
- put a credential value anywhere but the scan Secret's ``data``: the Job's
  spec, annotations, the scan row and every message carry references only
  (``credential.source`` and the registry key);
- leave a Secret without an owner: the Job is created suspended, the Secret
  owned by the Job's uid, then the Job resumed; Job and Secret are deleted
  when the result is stored, and the sweep deletes whatever outlived its
  deadline;
- duplicate work on redelivery: Job and Secret names derive from
  (cluster, digest, attempt), creation is adopt-on-conflict, and storing a
  result twice changes nothing.

This ``__init__`` re-exports what callers use, so ``scans.submit(...)`` reads
as before the split.
"""

from __future__ import annotations

from scanqueue.scans.collection import collect, collect_job
from scanqueue.scans.ending import fail, start_waiting
from scanqueue.scans.model import (
    ANNOTATION_CANDIDATE,
    ANNOTATION_REQUEST,
    ANNOTATION_SOURCE,
    Busy,
    Result,
    ScanContext,
    Step,
)
from scanqueue.scans.plan import next_start, plan_step, read_candidates
from scanqueue.scans.submission import submit
from scanqueue.scans.sweeping import Swept, sweep

__all__ = [
    "ANNOTATION_CANDIDATE",
    "ANNOTATION_REQUEST",
    "ANNOTATION_SOURCE",
    "Busy",
    "Result",
    "ScanContext",
    "Step",
    "Swept",
    "collect",
    "collect_job",
    "fail",
    "next_start",
    "plan_step",
    "read_candidates",
    "start_waiting",
    "submit",
    "sweep",
]
