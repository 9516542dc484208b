"""``--command``: a program per task, run without a shell (the task text is always one
argument, never part of the command), its output decoded on every OS, and on timeout or
interrupt killed with everything it started: its process group on POSIX, its job object on
Windows (taskkill, then the program itself, when that cannot be)."""

from __future__ import annotations

import codecs
import contextlib
import locale
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading

from taskqueue.errors import UserError
from taskqueue.wire.events import MAX_RESULT, cap_text
from taskqueue.wire.progress import MAX_LINE, parse_line
from taskqueue.worker.progress import ProgressBox, say_once
from taskqueue.worker.reaper import REAPER, close_job, program_job, terminate_job
from taskqueue.worker.work import Outcome, Runner, died_how, timed_out

STDERR_TAIL_BYTES = 2048
UTF8_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))
PREFIX = b"progress:"  # how a progress line begins (wire/progress.py)
KILL_WAIT_SECONDS = 10.0  # for a killed program to be gone (or taskkill to answer)


BATCH_SUFFIXES = (".bat", ".cmd")


def split_command(template: str, windows: bool = os.name == "nt") -> list[str]:
    """The ``--command`` template split once, never through a shell, so the task text is
    always data: by shell-like (shlex) rules on POSIX, by the rules Windows programs split
    their own command line with on Windows (``C:\\Users\\me\\prog.py`` keeps its
    backslashes). UserError if the program cannot be found, or if on Windows it is a batch
    file: Windows runs those through cmd.exe, whose quoting rules are not the ones arguments
    are quoted by, so a task such as ``a" & calc & "`` would run calc."""
    try:
        argv = split_windows(template) if windows else shlex.split(template)
    except ValueError as exc:
        raise UserError(f"cannot split --command {template!r} ({exc}); check its quotes") from None
    if not argv:
        raise UserError("--command is empty; give a program, e.g. --command \"python work.py {}\"")
    program = argv[0]
    found = shutil.which(program)
    if found is None and not (os.path.dirname(program) and os.path.isfile(program)):
        raise UserError(f"--command: program {program!r} not found (not on PATH and not a "
                        "file); give its full path or install it")
    if windows and (found or program).lower().endswith(BATCH_SUFFIXES):
        raise UserError(f"--command: {found or program!r} is a batch file, which Windows runs "
                        "through cmd.exe, where a task's text could run commands; give the "
                        "program it starts instead (e.g. node with the script for npx)")
    return argv


def split_windows(command: str) -> list[str]:
    """Split *command* as the Microsoft C runtime splits a program's command line (and so as
    ``subprocess.list2cmdline`` quotes a list back): blanks separate arguments outside double
    quotes; backslashes are literal unless they precede a quote, where each pair is one
    backslash and an odd one out makes the quote literal; ``""`` inside quotes is a quote.
    ValueError for a quote left open."""
    args: list[str] = []
    current: list[str] = []
    started = quoted = False
    index = 0
    while index < len(command):
        char = command[index]
        if char == "\\":
            end = index
            while end < len(command) and command[end] == "\\":
                end += 1
            count = end - index
            before_quote = end < len(command) and command[end] == '"'
            current.append("\\" * (count // 2 if before_quote else count))
            if before_quote and count % 2:
                current.append('"')
                end += 1
            index, started = end, True
        elif char == '"':
            if quoted and command[index + 1:index + 2] == '"':
                current.append('"')
                index += 1
            else:
                quoted = not quoted
            index, started = index + 1, True
        elif char in " \t" and not quoted:
            if started:
                args.append("".join(current))
                current, started = [], False
            index += 1
        else:
            current.append(char)
            index, started = index + 1, True
    if quoted:
        raise ValueError("no closing quotation")
    if started:
        args.append("".join(current))
    return args


def command_for(argv: list[str], text: str) -> list[str]:
    """Each ``{}`` becomes the task text, inside one argument; without ``{}`` the text is
    added as the last argument (as GNU parallel does)."""
    if any("{}" in arg for arg in argv):
        return [arg.replace("{}", text) for arg in argv]
    return [*argv, text]


class CommandWork(Runner):
    """``--command``: one program run per task. Exit code 0 is done, with its stdout (capped)
    as the result; anything else is a failure whose reason is the exit code and the last
    lines of stderr. On timeout its whole process group (or tree, on Windows) is killed.
    Lines of its stdout that are progress lines (``progress: 40% step 2 of 5``,
    wire/progress.py) are its progress, not part of its result."""

    def __init__(self, argv: list[str], timeout: float | None = None) -> None:
        self.argv, self.timeout = argv, timeout
        self._process: subprocess.Popen | None = None
        self._job: int | None = None  # Windows: the job the program and its children are in
        self._job_lock = threading.Lock()
        self._killed = False

    def run(self, text: str) -> Outcome:
        self._killed = False
        if "\0" in text:  # the OS cannot pass it as an argument (Popen raises ValueError)
            return Outcome(False, reason="the task text contains a NUL byte, which cannot be "
                                         "part of a program's argument")
        try:
            process = subprocess.Popen(command_for(self.argv, text), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       **_own_process_group())
        except (OSError, ValueError) as exc:
            return Outcome(False, reason=f"cannot run {self.argv[0]!r}: "
                                         f"{getattr(exc, 'strerror', None) or exc}")
        self._process = process
        if sys.platform == "win32":  # Popen's _handle: the process handle, Windows only
            self._job = program_job(int(process._handle))  # type: ignore[attr-defined]
        else:
            self._job = None
        REAPER.watch(process.pid)  # it dies with the worker, however the worker ends
        stdout = _Drain(process.stdout, keep_head=MAX_RESULT,
                        lines=ProgressLines(self.progress))
        stderr = _Drain(process.stderr, keep_tail=STDERR_TAIL_BYTES)
        try:
            code = process.wait(self.timeout)
        except subprocess.TimeoutExpired as expired:
            self._kill_tree()
            _make_sure_it_ended(process)
            stdout.join()
            stderr.join()
            return timed_out(expired.timeout)
        finally:
            self._process = None
            REAPER.forget(process.pid)
            with self._job_lock:  # interrupt() may be terminating it from another thread
                if self._job is not None:
                    close_job(self._job)
                    self._job = None
        stdout.join()
        stderr.join()
        if code == 0 and not self._killed:
            output = stdout.text().strip()
            return Outcome(True, output or None)
        tail = " | ".join(stderr.text().strip().splitlines()[-5:])
        how = "stopped" if self._killed else (f"exit code {code}" if code >= 0
                                               else died_how(code))
        return Outcome(False, reason=f"{how}{': ' + tail if tail else ''}")

    def _kill_tree(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._killed = True
        if sys.platform == "win32":
            # no process groups: the program's job, else taskkill, knows the tree
            with self._job_lock:
                killed = self._job is not None and terminate_job(self._job)
            killed = killed or _taskkill_tree(process.pid)
        else:
            try:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
            except OSError:
                killed = False
        if not killed:  # the program itself at least (its children die with the worker)
            with contextlib.suppress(OSError):
                process.kill()

    def interrupt(self) -> None:
        self._kill_tree()


def _taskkill_tree(pid: int) -> bool:
    """Windows: kill *pid* and its descendants; False if taskkill could not (or hung)."""
    try:
        return subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                              check=False, timeout=KILL_WAIT_SECONDS).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _make_sure_it_ended(process: subprocess.Popen) -> None:
    """Wait a bounded time for a killed program; then kill it itself (TerminateProcess,
    SIGKILL) and wait a bounded time again: a kill that did not work never hangs the slot."""
    for _ in range(2):
        try:
            process.wait(KILL_WAIT_SECONDS)
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                process.kill()


def _own_process_group() -> dict:
    """Start the program in a group of its own: a terminal's Ctrl+C (meant for the worker,
    which finishes its tasks) does not reach it, and a timeout can kill it with its children."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


class ProgressLines:
    """Take a program's progress lines out of its output as it comes. Whole lines only: a
    line's start cut off by the end of a read is held (at most MAX_LINE bytes) until its end
    comes, and the output's last line counts without an end of line too; a longer line, or
    one that does not begin with ``progress:``, is output whatever it says."""

    def __init__(self, box: ProgressBox) -> None:
        self.box = box
        self._partial = b""  # the start of a line that may be a progress line
        self._at_line_start = True  # the next byte begins a line

    def feed(self, block: bytes) -> bytes:
        """*block* less its progress lines (a line held back comes out with a later call)."""
        data, self._partial = self._partial + block, b""
        start = 0
        if not self._at_line_start:  # the rest of a line already given out as output
            start = data.find(b"\n") + 1
            if not start:
                return data
        cut = max(start, data.rfind(b"\n") + 1)
        head, whole, rest = data[:start], data[start:cut], data[cut:]
        if rest and len(rest) <= MAX_LINE and (rest.startswith(PREFIX)
                                               or PREFIX.startswith(rest)):
            self._partial, rest = rest, b""  # may be a progress line: wait for its end
        self._at_line_start = not rest
        if PREFIX in whole:
            whole = b"".join(line + b"\n" for line in whole.split(b"\n")[:-1]
                             if not self._took(line))
        return head + whole + rest

    def end(self) -> bytes:
        """The output's last line, if it had no end of line and is not a progress line."""
        rest, self._partial = self._partial, b""
        return b"" if not rest or self._took(rest) else rest

    def _took(self, line: bytes) -> bool:
        """True if *line* (without its end of line) is a progress line, and so not output."""
        if not line.startswith(PREFIX) or len(line) > MAX_LINE + 1:
            return False
        found = parse_line(decode_output(line.rstrip(b"\r")))
        if found is None:
            return False
        if found.fraction is None:
            say_once("line", f"a --command program printed {line[:60]!r}: not a fraction "
                     "from 0 to 1 (or 0% to 100%); ignored")
        else:
            self.box.offer(found.fraction, found.note)
        return True


class _Drain:
    """Read a pipe to its end on a thread, keeping only its first or last bytes (memory stays
    bounded however much a program writes); *lines* takes out the progress lines first."""

    def __init__(self, stream, *, keep_head: int = 0, keep_tail: int = 0,
                 lines: ProgressLines | None = None) -> None:
        self._stream, self._head, self._tail = stream, keep_head, keep_tail
        self._lines = lines
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._stream:
            while True:
                block = self._stream.read1(65536) if hasattr(self._stream, "read1") else \
                    self._stream.read(65536)
                kept = block
                if self._lines is not None:
                    kept = self._lines.feed(block) if block else self._lines.end()
                if self._head:
                    self._kept += kept[:max(0, self._head + 4 - len(self._kept))]
                else:
                    self._kept += kept
                    del self._kept[:-self._tail]
                if not block:
                    return

    def join(self) -> None:
        self._thread.join(10)

    def text(self) -> str:
        return cap_text(decode_output(bytes(self._kept)), self._head or self._tail)


def decode_output(data: bytes, windows: bool = os.name == "nt") -> str:
    """A program's output as text, never failing. UTF-8 when it is UTF-8 (a cut character at
    either end does not count against it); otherwise, on Windows, the ANSI code page, which
    is what Windows programs (Python's print to a pipe among them) write in."""
    if windows:
        trimmed = data.lstrip(UTF8_CONTINUATION_BYTES)  # a tail cut inside a character
        try:
            codecs.getincrementaldecoder("utf-8")().decode(trimmed, final=False)
        except UnicodeDecodeError:
            return data.decode(locale.getpreferredencoding(False), "replace")
    return data.decode("utf-8", "replace")
