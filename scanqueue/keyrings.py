"""A pod's keyrings: its pull secrets (or its service account's), read fresh from the API.

The one reader behind a scan's credential plan (``scans.plan``) and ``scanqueue explain``,
so that what explain shows is what the worker tries. It reads as the kubelet does: the
pod's ``imagePullSecrets``, or when it lists none its service account's; a missing or
malformed secret is skipped with a note, as the kubelet carries on too. Which keyring
matches an image, in which order, is ``credentials.candidates``.

What it must never do: put a secret's content in a note or a message.
"""

from __future__ import annotations

from collections.abc import Sequence

from scanqueue import credentials, kube

Keyring = list[credentials.Credential]


def read(
    api: kube.ApiClient,
    *,
    namespace: str,
    pull_secrets: Sequence[str],
    service_account: str,
    forbidden_is_note: bool = False,
) -> tuple[list[Keyring], list[str]]:
    """Return the keyrings of the pull secrets ``pull_secrets`` in ``namespace`` (when there
    are none, those of ``service_account``), in order, and notes on what was skipped.

    ``forbidden_is_note``: a secret or service account the identity in use may not read is
    a note (explain runs with a person's identity) instead of ``kube.Forbidden`` (a worker
    lacking a grant is a deployment error). Other API errors propagate.
    """
    notes: list[str] = []
    names = list(pull_secrets)
    if not names:
        account = None
        try:
            account = kube.read_service_account(api=api, namespace=namespace, name=service_account)
        except kube.NotFound:
            notes.append(f"service account {namespace}/{service_account} not found")
        except kube.Forbidden as e:
            if not forbidden_is_note:
                raise
            notes.append(f"service account {namespace}/{service_account} not read: {e}")
        names = credentials.pull_secret_names({}, account)
    keyrings: list[Keyring] = []
    for name in names:
        where = f"{namespace}/{name}"
        try:
            secret = kube.read_secret(api=api, namespace=namespace, name=name)
        except kube.NotFound:
            notes.append(f"pull secret {where} not found")
            continue
        except kube.Forbidden as e:
            if not forbidden_is_note:
                raise
            notes.append(f"pull secret {where} not read (its candidates are missing): {e}")
            continue
        try:
            found, reason = credentials.from_secret(secret)
        except credentials.MalformedSecret as e:
            notes.append(str(e))
            continue
        if reason:
            notes.append(reason)
        keyrings.append(found)
    return keyrings, notes
