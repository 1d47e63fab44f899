"""The Kubernetes API emulator: tests and the demo only; production modules never import it.

No real Kubernetes runs where scanqueue is tested, and everything scanqueue
does goes through the Kubernetes API, so this package plays a cluster that the
official ``kubernetes`` client cannot tell from kube-apiserver for every call
scanqueue makes, and plays the Job controller, the garbage collector, the
scheduler and a kubelet for scan pods (whose registry pull is real: skopeo).

- ``emulator.Emulator``: the whole thing in one object, started in a thread
  (``url``, ``kubeconfig(path)``, ``api_client()``, in-process ``create``/
  ``get``/``list``/``delete``, ``set_report``, ``set_digest``, ``faults``,
  ``request_counts``, ``wait_for``).
- ``scenario``: a YAML file declaring a cluster (``load``, ``apply``); the demo
  ships as ``data/demo.yaml``.
- ``cluster`` (state and API semantics; ``bodies`` checks what is written),
  ``server`` (HTTP), ``controllers``
  (the work queue and GC), ``jobcontroller`` (Job, TTL), ``podkubelet``
  (scheduler, kubelet), ``objstatus`` (conditions, Events), ``kubelet`` (images,
  the digest and the recorded report), ``podrun`` (a scan pod's real Trivy),
  ``admission``/``validation`` (what the API server refuses), ``patch``,
  ``selectors``, ``resources``, ``faults``.

It must never import scanqueue's own modules other than ``scanqueue.errors``:
a bug there must not be hidden by the same bug here. It must never log a
request body or a secret's content.
"""
