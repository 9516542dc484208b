"""The Windows defects of issue 28: each fix tested through its Windows code path.

Two tiers. The pure ones run everywhere, with the Windows path chosen explicitly (a
``windows=True`` argument) or its Windows-only condition reproduced on Linux (a PermissionError
for a directory, a stdout that cannot encode the text). Those marked ``windows`` need the real
thing: ``bash scripts/windows.sh test`` runs them under the official Windows CPython via Wine.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from taskqueue.emitter import shared_files
from taskqueue.emitter import tasks as tasks_module
from taskqueue.emitter.publisher import ConfirmedPublisher
from taskqueue.emitter.resume import ResumeState
from taskqueue.emitter.tasks import CsvError, open_task_file
from taskqueue.worker import command as command_module
from taskqueue.worker.command import (
    CommandWork,
    command_for,
    decode_output,
    split_command,
    split_windows,
)
from taskqueue.worker.work import IsolatedHandler

WINDOWS = os.name == "nt"
windows_only = pytest.mark.skipif(not WINDOWS, reason="needs Windows (scripts/windows.sh test)")
HOSTILE_TASKS = ['a" & calc & "', 'C:\\dir\\', 'x\\"y', 'two words', '"', '\\\\server\\share',
                 '%PATH% ^& | < >', "tab\there", "", "日本語 ünïcödé"]


# --command split by Windows rules on Windows --------------------------------------------------

def test_a_windows_path_in_a_command_keeps_its_backslashes() -> None:
    argv = split_command(f'"{sys.executable}" C:\\Users\\me\\prog.py {{}}', windows=True)
    assert argv == [sys.executable, "C:\\Users\\me\\prog.py", "{}"]


def test_windows_rules_quote_paths_with_blanks_and_keep_trailing_backslashes() -> None:
    assert split_windows('"C:\\Program Files\\x\\p.exe" "C:\\out dir\\\\" -n') == \
        ["C:\\Program Files\\x\\p.exe", "C:\\out dir\\", "-n"]


def test_posix_rules_are_unchanged_off_windows() -> None:
    argv = split_command(f"'{sys.executable}' 'a b' c\\ d {{}}", windows=False)
    assert argv == [sys.executable, "a b", "c d", "{}"]


@pytest.mark.parametrize("text", HOSTILE_TASKS)
def test_a_task_stays_one_argument_of_the_windows_command_line(text: str) -> None:
    """Popen joins the arguments with list2cmdline; a Windows program splits them back by
    the rules split_windows follows: the task is still exactly one argument."""
    argv = command_for(split_windows("prog.exe --in {} --out out\\{}.txt"), text)
    assert split_windows(subprocess.list2cmdline(argv)) == argv
    assert argv[2] == text


def test_an_open_quote_in_a_windows_command_is_one_clear_error() -> None:
    with pytest.raises(Exception, match="check its quotes"):
        split_command('"C:\\Program Files\\x.exe {}', windows=True)


# A program's output in the ANSI code page ------------------------------------------------------

def test_windows_output_in_the_ansi_code_page_is_decoded_with_it(monkeypatch) -> None:
    monkeypatch.setattr(command_module.locale, "getpreferredencoding", lambda _=True: "cp1252")
    assert decode_output("café – 5 €".encode("cp1252"), windows=True) == "café – 5 €"


def test_utf8_output_stays_utf8_even_cut_inside_a_character(monkeypatch) -> None:
    monkeypatch.setattr(command_module.locale, "getpreferredencoding", lambda _=True: "cp1252")
    data = "日本語".encode()
    assert decode_output(data, windows=True) == "日本語"
    assert decode_output(data[:-1], windows=True).startswith("日本")
    assert decode_output(data[1:], windows=True).endswith("本語")


def test_undecodable_output_never_fails() -> None:
    assert decode_output(bytes(range(256)), windows=True)
    assert decode_output(bytes(range(256)), windows=False)


# A handler's print to a stdout that cannot encode it ------------------------------------------

HANDLER_MODULE = '''
def greet(text):
    print("こんにちは, Grüße, Ελλάδα:", text)
    return "printed"
'''


def test_a_handler_printing_text_its_stdout_cannot_encode_still_succeeds(
        tmp_path: Path, monkeypatch) -> None:
    """A Windows worker's redirected stdout is cp1252; an ASCII stdout does the same on Linux."""
    monkeypatch.setenv("PYTHONIOENCODING", "ascii")
    outcome = greet_in_a_child(tmp_path, monkeypatch)
    assert outcome.ok, outcome.reason
    assert outcome.result == "printed"


def greet_in_a_child(tmp_path: Path, monkeypatch):
    """The outcome of HANDLER_MODULE's greet('Zoë') run in an isolated child."""
    (tmp_path / "greeting_handler.py").write_text(HANDLER_MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runner = IsolatedHandler("greeting_handler:greet", timeout=120)
    try:
        runner.start()
        return runner.run("Zoë")
    finally:
        runner.close()


# Saving the resume point while another process holds the file ---------------------------------

def flaky_replace(failures: int):
    calls = []
    real_replace = os.replace

    def replace(source, target) -> None:
        calls.append(target)
        if len(calls) <= failures:
            raise PermissionError(13, "The process cannot access the file because it is being "
                                      "used by another process")
        real_replace(source, target)
    return replace, calls


def test_the_resume_point_is_saved_once_the_other_process_lets_go(tmp_path: Path,
                                                                  monkeypatch) -> None:
    replace, calls = flaky_replace(failures=2)
    monkeypatch.setattr(shared_files.os, "replace", replace)
    state = ResumeState(tmp_path, str(tmp_path / "tasks.csv"), "q")
    state.save(41, complete=False, run_id="r1")
    assert state.confirmed_through() == 41 and len(calls) == 3


def fake_publisher(state: ResumeState, through: int, log: logging.Logger) -> SimpleNamespace:
    """What ConfirmedPublisher.save_state reads, without a broker connection."""
    return SimpleNamespace(_state=state, stats=SimpleNamespace(confirmed=through), _run_id="r1",
                           confirmed_through=lambda: through, _save_failing=False, log=log,
                           _horizon=0, last_row_read=through)


def test_a_resume_point_that_cannot_be_saved_is_one_line_not_a_traceback(
        tmp_path: Path, monkeypatch, caplog) -> None:
    state = ResumeState(tmp_path, str(tmp_path / "tasks.csv"), "q")
    state.save(10, complete=False, run_id="r1")
    replace, _ = flaky_replace(failures=10 ** 6)
    monkeypatch.setattr(shared_files.os, "replace", replace)
    monkeypatch.setattr(shared_files, "REPLACE_PAUSE_SECONDS", 0)
    emitter = fake_publisher(state, 20, logging.getLogger("test.resume"))
    with caplog.at_level(logging.WARNING, "test.resume"):
        for _ in range(3):  # each second while it lasts: said once
            ConfirmedPublisher.save_state(emitter, complete=False, periodic=True)
        ConfirmedPublisher.save_state(emitter, complete=True)  # the end of the run: said again
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert "cannot save the resume point (rows through 20 confirmed)" in lines[0]
    assert "--resume would start after row 10" in lines[1]
    assert state.confirmed_through() == 10  # the point saved before is intact
    assert not list(state.path.parent.glob("*.tmp"))


# A directory given as the task file -----------------------------------------------------------

def test_a_directory_as_task_file_says_so_where_opening_it_is_permission_denied(
        tmp_path: Path, monkeypatch) -> None:
    """Windows raises PermissionError for a directory, as this fake open does."""
    def windows_open(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(tasks_module, "open", windows_open, raising=False)
    with pytest.raises(CsvError, match="is a directory"):
        open_task_file(str(tmp_path))


def test_a_file_that_cannot_be_read_still_says_why(tmp_path: Path, monkeypatch) -> None:
    def denied(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(tasks_module, "open", denied, raising=False)
    with pytest.raises(CsvError, match=r"cannot read task file .*Permission denied"):
        open_task_file(str(tmp_path / "locked.csv"))


# A timed-out program whose kill did not work ---------------------------------------------------

SLEEPER = "import time; time.sleep(300)"


def run_in_thread(runner: CommandWork, text: str) -> tuple[threading.Thread, list]:
    outcomes: list = []
    thread = threading.Thread(target=lambda: outcomes.append(runner.run(text)), daemon=True)
    thread.start()
    return thread, outcomes


@pytest.mark.skipif(WINDOWS, reason="the POSIX kill path (the Windows one: the windows tier)")
def test_a_timed_out_program_whose_group_kill_fails_still_ends_as_timed_out(monkeypatch) -> None:
    """The kill of the program's group does nothing (as a failing taskkill on Windows): the
    slot still gets its attempt back as timed out, the program killed itself."""
    monkeypatch.setattr(command_module.os, "killpg", lambda pid, sig: None)
    monkeypatch.setattr(command_module, "KILL_WAIT_SECONDS", 1.0)
    runner = CommandWork([sys.executable, "-c", SLEEPER], timeout=0.5)
    thread, outcomes = run_in_thread(runner, "task")
    thread.join(120)  # not a timing: before the fix it waited for the 300 s program
    assert not thread.is_alive(), "the slot hangs on a program its kill did not stop"
    assert outcomes[0].reason.startswith("timed out after 0.5 s")


# The windows tier: the real thing under Windows -----------------------------------------------

@pytest.mark.windows
@windows_only
def test_windows_a_timed_out_program_ends_as_timed_out_even_if_taskkill_fails() -> None:
    """Under Wine, ``taskkill /T`` fails: the program must be killed all the same."""
    runner = CommandWork([sys.executable, "-c", SLEEPER], timeout=1)
    thread, outcomes = run_in_thread(runner, "task")
    thread.join(240)
    assert not thread.is_alive(), "the slot hangs on a program taskkill did not stop"
    assert outcomes[0].reason.startswith("timed out after 1 s")


@pytest.mark.windows
@windows_only
def test_windows_command_keeps_a_windows_path_as_typed(tmp_path: Path) -> None:
    script = tmp_path / "echo_args.py"
    script.write_text("import sys; print(repr(sys.argv[1:]))", encoding="utf-8")
    argv = split_command(f'"{sys.executable}" {script} {{}} --out C:\\out\\{{}}.txt')
    assert argv[1] == str(script) and "\\" in argv[1]
    text = 'a" & echo pwned & "\\'
    outcome = CommandWork(argv, timeout=120).run(text)
    assert outcome.ok, outcome.reason
    assert outcome.result == repr([text, "--out", f"C:\\out\\{text}.txt"])


@pytest.mark.windows
@windows_only
def test_windows_a_programs_ansi_output_is_read_right(tmp_path: Path) -> None:
    """A Python program printing to a pipe writes the ANSI code page (cp1252 here)."""
    argv = [sys.executable, "-c", "import sys; print('café', sys.argv[1])"]
    outcome = CommandWork(argv, timeout=120).run("naïve")
    assert outcome.ok, outcome.reason
    assert outcome.result == "café naïve"


@pytest.mark.windows
@windows_only
def test_windows_a_handler_printing_non_latin_text_to_a_redirected_stdout(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    monkeypatch.delenv("PYTHONUTF8", raising=False)
    outcome = greet_in_a_child(tmp_path, monkeypatch)
    assert outcome.ok, outcome.reason


@pytest.mark.windows
@windows_only
def test_windows_a_directory_as_task_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="is a directory"):
        open_task_file(str(tmp_path))


@pytest.mark.windows
@windows_only
def test_windows_the_resume_point_held_open_elsewhere_is_one_line(tmp_path: Path,
                                                                  caplog) -> None:
    state = ResumeState(tmp_path, str(tmp_path / "tasks.csv"), "q")
    state.save(10, complete=False, run_id="r1")
    emitter = fake_publisher(state, 20, logging.getLogger("test.resume"))
    with open(state.path, "rb"), caplog.at_level(logging.WARNING, "test.resume"):
        ConfirmedPublisher.save_state(emitter, complete=True)  # another process has it open
    assert len(caplog.records) == 1 and "cannot save the resume point" in caplog.text
    ConfirmedPublisher.save_state(emitter, complete=True)  # let go: saved
    assert state.confirmed_through() == 20


PROGRAM = textwrap.dedent('''
    import os, sys, time
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
''')


@pytest.mark.windows
@windows_only
def test_windows_a_killed_worker_leaves_no_program_behind(tmp_path: Path, logs: Path,
                                                         queue: str) -> None:
    """The worker is killed hard (TerminateProcess, as Task Manager does): the program it
    was running for a task must end with it (the worker's kill-on-close job object)."""
    from tests.helpers import publish_raw, start_worker, wait_for

    program, pid_file = tmp_path / "long_program.py", tmp_path / "program.pid"
    program.write_text(PROGRAM, encoding="utf-8")
    # Forward slashes and quotes: the same split by either rule (the split has tests of its own).
    command = f'"{Path(sys.executable).as_posix()}" "{program.as_posix()}" {{}}'
    worker = start_worker("--queue", queue, "--command", command, log_dir=logs,
                          out=tmp_path / "worker.out")
    publish_raw(queue, [str(pid_file).encode()])
    wait_for(pid_file.exists, timeout=240, what="the program to start")
    program_pid = int(pid_file.read_text())
    assert process_alive(program_pid)
    worker.kill()  # TerminateProcess: no cleanup of its own runs
    worker.wait(120)
    assert wait_until_gone(program_pid), \
        f"the program (pid {program_pid}) outlived the killed worker"


def process_alive(pid: int) -> bool:
    return _process_exit_wait(pid, milliseconds=0)


def wait_until_gone(pid: int) -> bool:
    """True once *pid* has ended (waiting up to two minutes for it: not a timing)."""
    return not _process_exit_wait(pid, milliseconds=120_000)


def _process_exit_wait(pid: int, milliseconds: int) -> bool:
    """Whether *pid* is still running after waiting up to *milliseconds* for it to end."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.WaitForSingleObject.argtypes = [wintypes.HANDLE, wintypes.DWORD]
    kernel32.WaitForSingleObject.restype = wintypes.DWORD
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    synchronize, query_limited_information, wait_timeout = 0x00100000, 0x1000, 0x102
    handle = kernel32.OpenProcess(synchronize | query_limited_information, False, pid)
    if not handle:
        return False  # no such process any more
    try:
        return kernel32.WaitForSingleObject(handle, milliseconds) == wait_timeout
    finally:
        kernel32.CloseHandle(handle)


@pytest.mark.windows
@windows_only
def test_windows_a_worker_process_is_in_a_kill_on_close_job() -> None:
    """In a fresh process: the typed calls succeed, and a process it starts is in the job."""
    code = textwrap.dedent('''
        import ctypes, subprocess, sys
        from ctypes import wintypes
        from taskqueue.worker.reaper import REAPER
        problem = REAPER.start()
        assert problem is None, problem
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        k32.IsProcessInJob.argtypes = [wintypes.HANDLE, wintypes.HANDLE,
                                       ctypes.POINTER(wintypes.BOOL)]
        inside = wintypes.BOOL()
        assert k32.IsProcessInJob(wintypes.HANDLE(int(child._handle)), None,
                                  ctypes.byref(inside))
        child.kill()
        print("in job" if inside.value else "not in job")
    ''')
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240, cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.strip() == "in job", done.stderr


@pytest.mark.windows
@windows_only
def test_windows_ctrl_break_stops_the_worker_gracefully() -> None:
    """Windows has no SIGTERM to send: Ctrl+Break (SIGBREAK) is the graceful stop, counted
    as the worker's stop handlers count a Ctrl+C."""
    import signal

    from taskqueue.cli import on_stop_signals

    stops: list[int] = []
    session = SimpleNamespace(note_signal=lambda: stops.append(1))
    previous = {number: signal.getsignal(number) for number in signal.valid_signals()
                if signal.getsignal(number) is not None}
    try:
        on_stop_signals(session)
        signal.raise_signal(signal.SIGBREAK)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    assert stops == [1]
