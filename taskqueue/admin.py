"""The RabbitMQ admin panel (management plugin): where it is, whether it answers, opening it.

The panel's address is derived from the broker URL (same host, port 15672) unless given. The
URL shown never contains the password; the login page asks for it (guest/guest locally).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import urllib.error
import urllib.request
import webbrowser
from urllib.parse import urlsplit

ENABLE_COMMAND = "rabbitmq-plugins enable rabbitmq_management"


def admin_url(broker_url: str, override: str | None = None) -> str:
    """The panel's queue page, e.g. http://localhost:15672/#/queues."""
    if override:
        return override
    parts = urlsplit(broker_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if parts.scheme == "amqps" else "http"
    return f"{scheme}://{host}:15672/#/queues"


def panel_answers(url: str, timeout: float = 2.0) -> bool:
    """True when the management API answers at the panel's address (any HTTP answer counts)."""
    parts = urlsplit(url)
    probe = f"{parts.scheme}://{parts.netloc}/api/overview"
    try:
        urllib.request.urlopen(probe, timeout=timeout)
    except urllib.error.HTTPError:
        return True  # 401 without credentials: the API is there
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def ask_yes_no(question: str, timeout: float = 30.0) -> bool:
    """Ask on a terminal; no answer within *timeout* seconds counts as no. The answer is read
    on a thread of its own: select() on console input does not exist on Windows."""
    print(f"{question} y or n (no answer in {timeout:.0f} s = n): ", end="", flush=True)
    answers: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: answers.put(sys.stdin.readline()), name="answer",
                     daemon=True).start()
    try:
        answer = answers.get(timeout=timeout)
    except queue.Empty:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def offer_panel(url: str, open_it: bool, log: logging.Logger) -> None:
    """Log where the panel is; check it answers; open it in a browser if asked."""
    log.info("RabbitMQ admin panel: %s (log in with the broker user; guest/guest locally)", url)
    if not panel_answers(url):
        log.warning("the admin panel does not answer at %s; enable it on the broker with: %s",
                    url, ENABLE_COMMAND)
        return
    if open_it and not webbrowser.open(url):
        log.info("no browser could be opened here; open the URL above yourself")
