"""Flower settings (celery flower --conf=THIS): basic auth from a file, never the environment.

The same text is the flowerconfig.py key of deploy/30-config.yaml (a test keeps them equal);
compose.yaml mounts this file.
"""

import os

_path = os.environ.get("SQ_FLOWER_BASIC_AUTH_FILE", "/etc/scanqueue/secrets/flower-basic-auth")
with open(_path, encoding="utf-8") as _file:
    basic_auth = [a.strip() for a in _file.read().replace(",", "\n").splitlines() if a.strip()]
if not basic_auth:
    raise SystemExit(f"{_path} holds no user:password; Flower will not start without auth")
