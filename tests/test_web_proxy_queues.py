"""Several queues behind the TLS proxy under a prefix: ``task_report.py --serve --queue A
--queue B --public-url https://127.0.0.1:PORT/taskqueue/`` behind Debian's nginx, run with
docs/web.md's ``location`` block as it is written (test_web_proxy.py's fixtures). Through the
proxy, in headless chromium: the login, the overview (``/taskqueue/``) listing both queues
with links under the prefix, each queue's page (``/taskqueue/q/<name>/``) with its own
figures, a Pause on B's page that reaches B's control stream only, a cross-origin POST to B's
``control`` refused; and every address the pages name or ask for stays under the prefix (the
elements' links, and every request nginx saw: one that escaped to ``/`` would be in its log).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from playwright.sync_api import Page

from tests.dashboard import start_dashboard
from tests.helpers import delete_queues, start_worker, wait_for, write_csv
from tests.test_web_browser import emit, text_of
from tests.test_web_http import control_commands
from tests.test_web_proxy import PREFIX, auth_file, confirm, documented_location, log_in

# test_web_proxy.py's fixtures, shared (imported as themselves: pytest finds them here)
from tests.test_web_proxy import nginx as nginx
from tests.test_web_proxy import page as page

# Every element attribute that names an address (the script's own links included: it sets
# href on rows and links it makes).
ADDRESSES = """() => [...document.querySelectorAll('[href], [src], [action], [data-root]')]
  .flatMap((e) => ['href', 'src', 'action', 'data-root']
    .filter((a) => e.hasAttribute(a))
    .map((a) => [e.tagName + '[' + a + ']', e.getAttribute(a),
                 new URL(e.getAttribute(a), document.baseURI).href]))"""


def addresses_escaping(page: Page, public: str) -> list:
    """The page's addresses that do not resolve under *public* (the origin and the prefix)."""
    return [found for found in page.evaluate(ADDRESSES)
            if not found[2].startswith(public) and not found[1].startswith("#")]


def test_several_queues_behind_an_https_proxy_under_a_prefix(page, nginx, queue, logs,
                                                            tmp_path):
    a, b = queue, f"{queue}.b"
    public = f"{nginx.origin}{PREFIX}"
    board = start_dashboard(a, tmp_path, logs, "--queue", b, "--auth-file",
                            str(auth_file(tmp_path)), "--public-url", public)
    try:
        assert f"dashboard of queues {a!r}, {b!r}: {public}\n" in board.out.read_text()
        nginx.start(documented_location().replace("127.0.0.1:8800", f"127.0.0.1:{board.port}"))
        emit(a, logs, write_csv(tmp_path / "a.csv", [f"a{n}" for n in range(3)]))  # no worker
        worker_out = tmp_path / "wb.out"
        start_worker("--queue", b, "--name", "w-b", "--handler", "tests.handlers:shout",
                     log_dir=logs, out=worker_out)
        emit(b, logs, write_csv(tmp_path / "b.csv", [f"b{n}" for n in range(5)]))

        log_in(page, public)
        page.wait_for_url(public)
        page.wait_for_selector("#overview tr.queue-row >> nth=1")
        links = dict(zip(page.locator("#overview a.live-link").all_inner_texts(),
                         page.locator("#overview a.live-link").evaluate_all(
                             "(links) => links.map((link) => link.href)"), strict=True))
        assert links == {a: f"{public}q/{quote(a, safe='')}/",
                         b: f"{public}q/{quote(b, safe='')}/"}, links
        wait_for(lambda: page.locator(f'#overview tr.queue-row[data-queue="{a}"] '
                                      'td[data-figure="ready"]').inner_text() == "3",
                 timeout=30, what="A's depth on the overview, through the proxy")
        assert addresses_escaping(page, public) == [], "the overview's addresses"

        page.locator("#overview a.live-link", has_text=re.compile(f"^{re.escape(a)}$")).click()
        page.wait_for_url(links[a])
        page.wait_for_selector("#connection.ok")  # its stream, through nginx
        wait_for(lambda: text_of(page, "#q-ready") == "3", timeout=30, what="A's 3 waiting")
        assert page.locator("#workers tr.worker").count() == 0, "no worker on A"
        assert addresses_escaping(page, public) == [], "A's page's addresses"

        page.goto(links[b])
        page.wait_for_selector("#connection.ok")
        wait_for(lambda: text_of(page, "#r-done") == "5 / 5", timeout=60, what="B's run done")
        page.wait_for_selector("#workers tr.worker[data-worker=w-b]")
        wait_for(lambda: text_of(page, "#q-ready") == "0", timeout=30, what="B's queue empty")
        assert addresses_escaping(page, public) == [], "B's page's addresses"
        confirm(page, "pause", "Pause 1 worker(s)?")
        page.wait_for_selector("#toast.ok:has-text('paused queue')")
        assert f"paused queue {b!r}" in text_of(page, "#toast")
        wait_for(lambda: "paused" in worker_out.read_text(), what="B's worker paused")
        assert [c["command"] for c in control_commands(b)] == ["pause"]
        assert control_commands(a) == [], "A's control stream got nothing"

        # B's runs page and a run's page: their links under the prefix too.
        page.click("nav a:has-text('Runs')")
        page.wait_for_url(f"{links[b]}runs")
        page.wait_for_selector("#runs a")
        assert addresses_escaping(page, public) == [], "B's runs page's addresses"

        # Another origin's POST to B's control: refused, nothing sent.
        b_root = urlsplit(links[b]).path
        ticket = page.request.get(f"{links[b]}control/preview.json?action=resume").json()[
            "ticket"]
        xsrf = page.locator('meta[name="xsrf"]').get_attribute("content")
        for origin in ("https://evil.example", f"http://127.0.0.1:{board.port}"):
            refused = page.request.post(f"{links[b]}control", form={"ticket": ticket},
                                        headers={"Origin": origin, "X-XSRFToken": xsrf})
            assert refused.status == 403 and "cross-origin" in refused.text(), refused.text()
        assert [c["command"] for c in control_commands(b)] == ["pause"]
        assert control_commands(a) == []

        # Every request the browser made went through nginx under the prefix: none to /.
        asked = [line.split('"')[1].split(" ")[1]
                 for line in (nginx.home / "access.log").read_text().splitlines()]
        assert f"{b_root}control" in asked and f"{b_root}stream" in asked, asked
        assert f"{PREFIX}static/favicon.svg" in asked, "the icon named: no /favicon.ico asked"
        assert [path for path in asked if not path.startswith(PREFIX)] == [], asked
    finally:
        board.stop()
        delete_queues(b)
