"""The web view: ``task_report.py --serve`` (a live dashboard, the runs, dead tasks, control
and /metrics). Its dependencies are an extra (``pip install "taskqueue[web]"``): worker hosts
do not need them. Read serve.py first, then feed.py (the one broker reader), hub.py, app.py
(the routes) and door.py (what every route goes through: login, CSRF and Origin, headers);
access.py says who may use it and where browsers reach it (``--public-url``).
"""

from __future__ import annotations

from taskqueue.errors import UserError

NEEDS = ("tornado", "prometheus_client")


def require() -> None:
    """A clear line, not a traceback, when the extra is not installed."""
    missing = []
    for module in NEEDS:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"the web view needs {' and '.join(missing)}, which are not installed: "
                        'pip install "taskqueue[web]" (in a checkout: pip install tornado '
                        "prometheus_client)")
