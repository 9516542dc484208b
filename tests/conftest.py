"""Fixtures: the real main broker (its absence fails the run), a unique queue per test that
is deleted afterwards, and throwaway broker nodes for fault tests. A run that leaves a
``test.`` queue on the main broker fails (``no_leftover_queues``)."""

from __future__ import annotations

import multiprocessing.process
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pika
import pytest

from tests.brokers import ThrowawayBroker
from tests.helpers import MAIN_URL, delete_queues, kill_leftovers, queue_names


@pytest.fixture(scope="session")
def main_broker() -> str:
    """The broker on 127.0.0.1:5672. Missing, it fails the tests (never skips them)."""
    try:
        pika.BlockingConnection(pika.URLParameters(MAIN_URL)).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"no RabbitMQ on 127.0.0.1:5672 ({exc!r}); start it: rabbitmq-server -detached",
                    pytrace=False)
    return MAIN_URL


LEFTOVERS: dict[str, object] = {}  # what no_leftover_queues found, for pytest_sessionfinish
TEST_PREFIX = "test."
SETTLE_SECONDS = 5.0  # exclusive queues of a command just ended may take a moment to go


@pytest.fixture(scope="session", autouse=True)
def no_leftover_queues(request: pytest.FixtureRequest):
    """At the end of the session, the ``test.`` queues on the main broker that were not there
    at its start; pytest_sessionfinish fails the run if there are any. Those of older runs are
    counted, not held against this one. A session of fast tests only (``-m fast``) makes no
    queue and needs no broker: nothing to check."""
    if fast_only(request.session):
        yield
        return
    try:
        before = queue_names(TEST_PREFIX)
    except (OSError, subprocess.SubprocessError) as exc:
        LEFTOVERS["unchecked"] = f"{exc!r:.200}"
        yield
        return
    LEFTOVERS["before"] = before
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            left = queue_names(TEST_PREFIX) - before
        except (OSError, subprocess.SubprocessError) as exc:
            LEFTOVERS["unchecked"] = f"{exc!r:.200}"
            return
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    LEFTOVERS["left"] = sorted(left)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if LEFTOVERS.get("left") and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    write = terminalreporter.write_line
    if "unchecked" in LEFTOVERS:
        write(f"leftover queues not checked: rabbitmqctl could not list them "
              f"({LEFTOVERS['unchecked']})")
    if LEFTOVERS.get("before"):
        write(f"{len(LEFTOVERS['before'])} '{TEST_PREFIX}' queue(s) were on the main broker "
              "before this run (ignored); delete them with rabbitmqctl delete_queue")
    left = LEFTOVERS.get("left")
    if left:
        terminalreporter.write_sep("=", f"FAILED: {len(left)} '{TEST_PREFIX}' queue(s) left "
                                   "on the main broker", red=True)
        for name in left:
            write(f"  {name}")
        write("delete them in the test's teardown (tests.helpers.delete_queues), or use the "
              "queue fixture; another test session running at the same time leaves them too")


@pytest.fixture
def queue(main_broker: str, request: pytest.FixtureRequest) -> str:
    """A fresh queue name on the main broker; it and its companions are deleted afterwards."""
    name = f"test.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}"
    yield name
    kill_leftovers()
    delete_queues(name)


def fast_only(session: pytest.Session) -> bool:
    """The session runs the fast tier alone (``-m fast``: ``make test-fast``, ``make test``'s
    first step)."""
    return all(item.get_closest_marker("fast") for item in session.items)


@pytest.fixture(autouse=True)
def fast_means_no_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the fast tier, a test runs its code in this process only: opening a connection or
    starting a process fails it at once, so the tier stays quick and needs no broker. Only
    when the tier runs alone: in a mixed session, another test's thread may still connect."""
    if request.node.get_closest_marker("fast") is None or not fast_only(request.session):
        return

    def refuse(what: str):
        def refused(*_args: object, **_kwargs: object) -> None:
            raise AssertionError(f"a test marked fast {what}: it belongs to the full suite")
        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("opened a connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("opened a connection"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("started a process"))
    # multiprocessing's spawn and fork do not go through Popen
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("started a process"))
    if hasattr(os, "fork"):
        monkeypatch.setattr(os, "fork", refuse("forked"))


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every background script a test started is gone when the test ends."""
    yield
    kill_leftovers()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


def _node(conf: list[str]) -> ThrowawayBroker:
    if not shutil.which("rabbitmq-server"):
        pytest.fail("rabbitmq-server is not installed; fault tests need it", pytrace=False)
    return ThrowawayBroker(conf).start()


@pytest.fixture(scope="module")
def node():
    """A throwaway broker node the tests of a module may restart or stop (each test uses its
    own queue, and leaves the node running)."""
    broker = _node([])
    yield broker
    broker.cleanup()


@pytest.fixture(scope="module")
def heartbeat_node():
    """A throwaway node that asks clients for a 2 s heartbeat."""
    broker = _node(["heartbeat = 2"])
    yield broker
    broker.cleanup()


# Windows (scripts/windows.sh runs the suite under Windows python): a test that needs what
# Windows lacks skips there with the reason, found by the fixtures it uses, the names its code
# reads (its nested functions too) or its module. Nothing of this applies on POSIX.
WINDOWS_LACKS_MODULE = {
    "test_install": "installs into a POSIX venv (bin/) and runs the README's systemd unit",
    "test_partitions": "cuts nodes apart with iptables",
    "test_web_browser": "drives Debian's chromium",
}
WINDOWS_LACKS_NAME = {
    **dict.fromkeys(["SIGKILL", "SIGTERM", "SIGINT", "SIGSTOP", "SIGCONT", "killpg"],
                    "sends a POSIX signal (Windows has TerminateProcess and console events)"),
    **dict.fromkeys(["unacked", "queue_names", "ctl"], "asks rabbitmqctl (not on Windows)"),
    **dict.fromkeys(["openpty", "pty"], "needs a POSIX pseudo-terminal"),
    "Tmux": "drives tmux",
}


def names_read(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= names_read(constant)
    return names


def windows_lack(item: pytest.Item) -> str | None:
    """Why *item* cannot run on Windows, or None."""
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    if module in WINDOWS_LACKS_MODULE:
        return WINDOWS_LACKS_MODULE[module]
    for fixture in getattr(item, "fixturenames", ()):
        if fixture.endswith("node") or fixture in ("cluster", "proxy"):
            return f"starts a throwaway RabbitMQ node (rabbitmq-server; fixture {fixture})"
    function = getattr(item, "function", None)
    code = getattr(function, "__code__", None)
    for name in sorted(names_read(code)) if code else ():
        if name in WINDOWS_LACKS_NAME:
            return f"{WINDOWS_LACKS_NAME[name]} ({name})"
    return None


# The fast tier (``make test-fast``, run first by ``make test``): the existing tests that need
# no broker, connection or process, found by running every test without a broker fixture under
# fast_means_no_io. Listed here, not marked in their modules (20 modules others edit); a new
# pure test goes in a tests/test_fast_*.py module (all fast) or gets @pytest.mark.fast.
FAST_MODULES = {"test_chaos_sides", "test_checks", "test_config", "test_confirms", "test_index",
                "test_layers", "test_policy"}
FAST_TESTS = {
    "test_admin": ["test_no_answer_in_time_is_no",
                   "test_the_question_needs_no_select_on_the_console"],
    "test_connection_errors": ["test_an_unverified_certificate_says_what_failed",
                               "test_only_an_untrusted_issuer_asks_for_the_ca",
                               "test_os_errors_of_linux_and_windows_give_one_reason"],
    "test_control": ["test_control_state_is_what_the_commands_add_up_to",
                     "test_the_live_view_shows_a_paused_queue_and_its_workers",
                     "test_the_policy_acks_a_cancelled_runs_tasks"],
    "test_interop": ["test_a_spreadsheets_csv_gives_the_texts_typed_in_the_cells",
                     "test_lines_that_are_not_one_quoted_cell_stay_as_written"],
    "test_live": ["test_live_state_from_made_up_events",
                  "test_the_live_view_remembers_a_bounded_number_of_event_ids"],
    "test_partitions": ["test_a_reading_still_catching_up_is_not_stalled",
                        "test_a_results_stream_refusing_every_second_is_said_every_ten",
                        "test_the_dashboards_choice_of_node", "test_the_reach_policy"],
    "test_rabbitmq4": ["test_a_missing_queue_is_not_a_node_down",
                       "test_a_queue_that_cannot_serve_is_told_apart_in_3x_and_4x_words"],
    "test_report": ["test_latest_run_and_run_filter"],
    "test_stuck": ["test_a_runner_that_raises_is_a_failed_attempt_and_the_slot_goes_on",
                   "test_batch_files_are_refused_on_windows"],
    "test_tasks": ["test_a_large_file_is_streamed", "test_a_long_quoted_field_is_read_in_one_pass",
                   "test_bad_files_name_the_line", "test_bom_is_dropped",
                   "test_csv_errors_say_what_is_wrong",
                   "test_each_nonblank_line_is_a_task_exactly_as_written",
                   "test_header_and_column_by_name_or_number",
                   "test_message_ids_are_stable_and_distinct", "test_messages_and_blank_message",
                   "test_missing_file_and_directory", "test_row_travels_inside_the_message_id",
                   "test_rows_before_a_bad_line_are_yielded_first", "test_seconds_per_dot",
                   "test_skip_through_resumes_after_a_row",
                   "test_unknown_column_names_the_columns"],
    "test_views": ["test_a_small_run_lists_every_attempt_and_big_ones_on_request",
                   "test_natural_order_in_the_report",
                   "test_time_labels_fall_on_round_values_in_a_fitting_unit",
                   "test_with_more_workers_than_rows_the_ones_that_matter_come_first"],
    "test_web_http": ["test_a_cell_a_spreadsheet_would_run_is_written_as_text",
                      "test_access_rules",
                      "test_the_live_data_folds_200_workers_of_8_slots_into_200_rows",
                      "test_the_run_index_gives_the_csvs_rows_in_its_order"],
    "test_windows_fixes": [
        "test_a_directory_as_task_file_says_so_where_opening_it_is_permission_denied",
        "test_a_file_that_cannot_be_read_still_says_why",
        "test_a_resume_point_that_cannot_be_saved_is_one_line_not_a_traceback",
        "test_a_task_stays_one_argument_of_the_windows_command_line",
        "test_a_windows_path_in_a_command_keeps_its_backslashes",
        "test_an_open_quote_in_a_windows_command_is_one_clear_error",
        "test_posix_rules_are_unchanged_off_windows",
        "test_the_resume_point_is_saved_once_the_other_process_lets_go",
        "test_undecodable_output_never_fails",
        "test_utf8_output_stays_utf8_even_cut_inside_a_character",
        "test_windows_output_in_the_ansi_code_page_is_decoded_with_it",
        "test_windows_rules_quote_paths_with_blanks_and_keep_trailing_backslashes"],
}


def is_fast(item: pytest.Item) -> bool:
    """Whether *item* belongs to the fast tier (see FAST_TESTS). A listed name its module no
    longer has is an error: a renamed test would leave the tier without a word."""
    module = getattr(item, "module", None)
    if module is None:
        return False
    name = module.__name__.rsplit(".", 1)[-1]
    missing = [test for test in FAST_TESTS.get(name, ()) if not hasattr(module, test)]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py FAST_TESTS names {missing} that "
                                f"{name}.py does not have (renamed? update the list)")
    return (name.startswith("test_fast_") or name in FAST_MODULES
            or item.originalname in FAST_TESTS.get(name, ()))


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_fast(item):
            item.add_marker(pytest.mark.fast)
    if sys.platform != "win32":
        return
    for item in items:
        if item.get_closest_marker("windows"):
            continue  # written for Windows (the tier's subset): it must run, never skip here
        reason = windows_lack(item)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"not on Windows: {reason}"))


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright: one per test module."""
    from playwright.sync_api import sync_playwright

    from tests.dashboard import CHROMIUM_ARGS, ensure_chromium

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies) and its page, at a desktop size; a module that needs
    other context options defines its own."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(scope="module")
def panel_node():
    """A throwaway node with the management plugin (the machine's broker has none); its HTTP
    port is ``panel_port``."""
    from tests.brokers import ThrowawayBroker, free_port

    port = free_port()
    node = ThrowawayBroker([f"management.tcp.port = {port}", "management.tcp.ip = 127.0.0.1"],
                           plugins="[rabbitmq_management].").start()
    node.panel_port = port
    yield node
    node.cleanup()
