"""Programs we start die with us, even when the worker itself is killed (SIGKILL, OOM killer).

A ``--command`` program runs in a process group (a session) of its own, so that a terminal's
Ctrl+C, meant for the worker, does not reach it. The flip side: nothing kills it when the
worker dies without cleaning up, and the broker hands its task to another worker, so the same
task would run twice at once with no timeout. So:

* POSIX: the first program started also starts a tiny *reaper* process that reads "+PGID" and
  "-PGID" lines from a pipe the worker holds. The pipe reaches end of file when the worker
  ends, however it ends; the reaper then kills every group still listed, and exits.
* Windows: the worker puts itself in a job object with KILL_ON_JOB_CLOSE; every process it
  starts is in the job, and the system ends them all when the worker's last handle closes.

Handler children (``IsolatedHandler``) watch the worker themselves (child.py).
"""

from __future__ import annotations

import contextlib
import os
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
        self._windows_job: object | None = None

    def watch(self, pid: int) -> None:
        """*pid* leads a process group of its own: kill it if we die before it ends."""
        if os.name == "nt":
            self._join_kill_on_close_job()
            return
        self._say(f"+{pid}\n")

    def forget(self, pid: int) -> None:
        """The group ended (or was killed by us): nothing to do for it."""
        if os.name != "nt":
            self._say(f"-{pid}\n")

    def close(self) -> None:
        """At a clean exit: the reaper kills what is left (nothing, normally) and exits."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
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
            try:
                self._process.stdin.write(line.encode())
                self._process.stdin.flush()
            except OSError:  # it died: the next call starts another
                self._process = None

    def _join_kill_on_close_job(self) -> None:
        with self._lock:
            if self._windows_job is None:
                self._windows_job = kill_on_close_job() or False


def kill_on_close_job() -> object | None:
    """Windows: put this process in a job whose processes all end when it does."""
    try:
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        job = kernel32.CreateJobObjectW(None, None)

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
                        ("ProcessMemoryLimit", ctypes.c_size_t),
                        ("JobMemoryLimit", ctypes.c_size_t),
                        ("PeakProcessMemoryUsed", ctypes.c_size_t),
                        ("PeakJobMemoryUsed", ctypes.c_size_t)]

        limits = ExtendedLimits()
        limits.BasicLimitInformation.LimitFlags = 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        extended_limit_information = 9
        kernel32.SetInformationJobObject(job, extended_limit_information, ctypes.byref(limits),
                                         ctypes.sizeof(limits))
        kernel32.AssignProcessToJobObject(job, kernel32.GetCurrentProcess())
        return job
    except (AttributeError, OSError):  # not Windows, or no job objects here
        return None


REAPER = Reaper()  # one per worker process
