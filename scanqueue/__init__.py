"""scanqueue: scan the images that run in Kubernetes clusters, keep the results in Postgres.

The package is the library. It never imports Celery (that lives in ``workers/``)
and nothing in it connects anywhere at import time.
"""

__version__ = "0.1.0"
