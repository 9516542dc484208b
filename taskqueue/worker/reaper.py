"""Programs we start die with us, even when the worker itself is killed (SIGKILL, OOM killer).

A ``--command`` program runs in a process group (a session) of its own, so that a terminal's
Ctrl+C, meant for the worker, does not reach it. The flip side: nothing kills it when the
worker dies without cleaning up, and the broker hands its task to another worker, so the same
task would run twice at once with no timeout. So:

* POSIX: the first program started also starts a tiny *reaper* process that reads "+PGID" and
  "-PGID" lines from a pipe the worker holds. The pipe reaches end of file when the worker
  ends, however it ends; the reaper then kills every group still listed, and exits.
* Windows: at its start, before any child exists, the worker puts itself in a job object with
  KILL_ON_JOB_CLOSE (``Reaper.start``); every process it starts later, and theirs, is born in
  the job, and the system ends them all when the worker's handle to it closes: when the worker
  ends, however it ends (Task Manager, TerminateProcess, closing its console window).

Handler children (``IsolatedHandler``) watch the worker themselves (child.py).
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import threading

# Runs as `python -c`: no import of ours, so it works wherever the worker was started from.
REAPER_CODE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    try:
        pid = int(line[1:])
    except ValueError:
        continue
    (groups.add if line[0] == "+" else groups.discard)(pid)
for pid in groups:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
"""


class Reaper:
    """Kills the process groups it was told of once this process is gone (see module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._windows_job: int | None = None

    def start(self) -> str | None:
        """At the worker's start, before any child exists. Windows: join a kill-on-close job
        now, so that every process started later (handler children, programs and theirs)
        is born in it. Returns why that failed (one line for the log), else None."""
        if sys.platform != "win32":
            return None
        with self._lock:
            if self._windows_job is not None:
                return None
            try:
                self._windows_job = join_kill_on_close_job()
            except OSError as error:
                return (f"programs started by this worker may outlive it if it is killed: "
                        f"the Windows job object could not be set up ({error})")
        return None

    def watch(self, pid: int) -> None:
        """*pid* leads a process group of its own: kill it if we die before it ends."""
        if sys.platform != "win32":  # Windows: the job joined at start() covers every child
            self._say(f"+{pid}\n")

    def forget(self, pid: int) -> None:
        """The group ended (or was killed by us): nothing to do for it."""
        if sys.platform != "win32":
            self._say(f"-{pid}\n")

    def close(self) -> None:
        """At a clean exit: the reaper kills what is left (nothing, normally) and exits."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
                if process.stdin is not None:  # started with stdin=PIPE: never None
                    process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def _say(self, line: str) -> None:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", REAPER_CODE], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)  # a terminal's Ctrl+C must not end it first
            pipe = self._process.stdin
            assert pipe is not None  # started with stdin=PIPE
            try:
                pipe.write(line.encode())
                pipe.flush()
            except OSError:  # it died: the next call starts another
                self._process = None


REAPER = Reaper()  # one per worker process


JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9  # the JOBOBJECTINFOCLASS value


def join_kill_on_close_job() -> int:
    """Windows: put this process in a new job whose processes all end when its last handle
    closes, i.e. when this process ends, however it ends. Returns the job handle (kept open
    for the process's life). OSError says which call failed and why.

    Every call is typed: untyped, ctypes passes a HANDLE as a 32-bit int and takes a 64-bit
    handle returned as one, so on 64-bit Windows the calls failed, silently."""
    import ctypes

    kernel32 = _kernel32()
    job = kernel32.CreateJobObjectW(None, None)
    _check(job, "CreateJobObjectW")
    limits = _extended_limits_type()()
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    _check(kernel32.SetInformationJobObject(job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
                                            ctypes.byref(limits), ctypes.sizeof(limits)),
           "SetInformationJobObject")
    _check(kernel32.AssignProcessToJobObject(job, kernel32.GetCurrentProcess()),
           "AssignProcessToJobObject")
    return job


def program_job(process_handle: int) -> int | None:
    """Windows: a job of its own for a ``--command`` program just started (nested in the
    worker's), so that a timeout ends the program and every process it started, with
    ``terminate_job``. None if that cannot be done here (the caller then uses taskkill)."""
    kernel32 = _kernel32()
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        return None
    if not kernel32.AssignProcessToJobObject(job, process_handle):
        kernel32.CloseHandle(job)
        return None
    return job


def terminate_job(job: int) -> bool:
    """End every process in *job* now; False if that failed."""
    return bool(_kernel32().TerminateJobObject(job, 1))


def close_job(job: int) -> None:
    """Let go of *job* (not kill-on-close: a program's leftovers after it ended normally are
    its own business, and die with the worker all the same)."""
    _kernel32().CloseHandle(job)


def _check(result: int | None, call: str) -> None:
    if not result and sys.platform == "win32":  # only Windows calls it (mypy: ctypes' Windows API)
        import ctypes

        code = ctypes.get_last_error()
        raise OSError(f"{call} failed: [WinError {code}] {ctypes.FormatError(code).strip()}")


@functools.cache
def _kernel32():
    """kernel32 with argtypes and restype set for each function used here."""
    if sys.platform != "win32":  # only Windows calls it (mypy: ctypes' Windows API below)
        raise OSError("kernel32 exists on Windows only")
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    signatures = {
        "CreateJobObjectW": ([wintypes.LPVOID, wintypes.LPCWSTR], wintypes.HANDLE),
        "SetInformationJobObject": ([wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                     wintypes.DWORD], wintypes.BOOL),
        "AssignProcessToJobObject": ([wintypes.HANDLE, wintypes.HANDLE], wintypes.BOOL),
        "GetCurrentProcess": ([], wintypes.HANDLE),
        "TerminateJobObject": ([wintypes.HANDLE, wintypes.UINT], wintypes.BOOL),
        "CloseHandle": ([wintypes.HANDLE], wintypes.BOOL),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(kernel32, name)
        function.argtypes, function.restype = argtypes, restype
    return kernel32


def _extended_limits_type() -> type:
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION (built lazily: ctypes.wintypes is Windows-only
    on some Pythons)."""
    import ctypes
    from ctypes import wintypes

    class BasicLimits(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64),
                    ("PerJobUserTimeLimit", ctypes.c_int64),
                    ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t),
                    ("ActiveProcessLimit", wintypes.DWORD), ("Affinity", ctypes.c_size_t),
                    ("PriorityClass", wintypes.DWORD), ("SchedulingClass", wintypes.DWORD)]

    class IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in (
            "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
            "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]

    class ExtendedLimits(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", BasicLimits), ("IoInfo", IoCounters),
                    ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t),
                    ("PeakJobMemoryUsed", ctypes.c_size_t)]

    return ExtendedLimits

