"""The live view (task_report.py --watch): driven in a real terminal (tmux) and through a pipe
while workers run, with the report still counting every task afterwards; and the demo."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid

from taskqueue.views.live import LiveState, QueueCounts
from taskqueue.wire.events import SEEN_IDS
from tests.helpers import (
    ROOT,
    consumers,
    run_script,
    script_env,
    start_script,
    start_worker,
    wait_for,
    write_csv,
)
from tests.stopping import all_settled, stop_when

ROWS = [f"task {n}" + "." * (1 + n % 3) for n in range(12)]


class Tmux:
    """A tmux server of our own (its own socket) running one command in a window of *size*
    (columns, lines)."""

    def __init__(self, command: list[str], env: dict[str, str],
                 size: tuple[int, int] = (150, 45)) -> None:
        assert shutil.which("tmux"), "tmux is needed (apt install tmux)"
        self.socket = f"tq-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items()
                           if key in ("TASKQUEUE_LOG_DIR", "PATH", "PYTHONUNBUFFERED"))
        shell = f"cd {shlex.quote(str(ROOT))} && env {exports} {shlex.join(command)}; sleep 120"
        self._tmux("new-session", "-d", "-s", "view", "-x", str(size[0]), "-y", str(size[1]),
                   shell)

    def resize(self, columns: int, lines: int) -> None:
        self._tmux("resize-window", "-t", "view", "-x", str(columns), "-y", str(lines))

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "view")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10, check=False)


def start_three_workers(queue: str, logs, tmp_path, seconds_per_dot: str = "0.3"):
    """Three workers consuming before the run is published; no idle exit (it would race the
    publish): the test stops them (tests/stopping.py)."""
    workers = [start_worker("--queue", queue, "--name", f"w{n}", "--seconds-per-dot",
                            seconds_per_dot, log_dir=logs, out=tmp_path / f"w{n}.out")
               for n in range(3)]
    wait_for(lambda: consumers(queue) == 3, what="3 workers")
    return workers


def test_the_live_view_in_a_terminal_shows_workers_tasks_queue_and_totals(queue, logs,
                                                                           tmp_path):
    csv = write_csv(tmp_path / "t.csv", ROWS)
    workers = start_three_workers(queue, logs, tmp_path)
    terminal = Tmux([sys.executable, "task_report.py", "--watch", "--until-done", "--queue",
                     queue], script_env(logs))
    piped = start_script("task_report.py", "--watch", "--until-done", "--queue", queue,
                         log_dir=logs, out=tmp_path / "piped.out")  # a second view at once
    try:
        time.sleep(1.5)  # both views subscribed: they see the run's size
        assert run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                          log_dir=logs).returncode == 0
        screens = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screens.append(terminal.screen())
            if "watched queue" in screens[-1]:
                break
            time.sleep(0.3)
        seen = "\n".join(screens)
        (tmp_path / "screens.txt").write_text(seen)
        assert all(f"w{n} " in seen for n in range(3)), "every worker has a line"
        assert 'busy on row' in seen, "a task in hand, with its row"
        assert f"queue {queue!r}: ready " in seen and "consumers 3" in seen
        final = screens[-1]
        assert "done 12/12" in final, final
        assert "watched queue" in final and "12 tasks done" in final
        assert piped.wait(timeout=60) == 0
    finally:
        terminal.close()
    outs = [tmp_path / f"w{n}.out" for n in range(3)]
    assert stop_when(all_settled(outs, len(ROWS), queue), queue, workers, log_dir=logs,
                     what="the run done") == [0, 0, 0]
    lines = (tmp_path / "piped.out").read_text().splitlines()
    assert lines and not any("\x1b" in line for line in lines), "no escape codes off a terminal"
    assert "done 12/12" in lines[-2], lines[-2:]
    report = run_script("task_report.py", "--queue", queue, "--reports-dir",
                        str(tmp_path / "reports"), log_dir=logs)
    assert report.returncode == 0, report.stderr
    assert "12 tasks done by 3 workers" in report.stdout, "watching took nothing from the report"
    assert "incomplete" not in report.stdout


def test_the_demo_runs_with_python_alone(queue, logs, tmp_path):
    env = script_env(logs)
    env.update(DEMO_QUEUE=queue, DEMO_SECONDS_PER_DOT="0.05")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "done 12/12" in out, "the live view's plain lines"
    assert "run " in out and "12 tasks done by 3 workers" in out
    assert "timeline picture:" in out
    for name in ("alice", "bob", "carol"):
        assert (logs / f"demo-{name}.out").exists()


def test_live_state_from_made_up_events():
    now = time.time()
    state = LiveState("q")
    state.feed({"kind": "run", "run_id": "r1", "state": "started", "total": 3, "time": now - 5})
    state.feed({"kind": "snapshot", "worker": "alice", "host": "h1", "time": now,
                "slots": [{"slot": "alice/1", "state": "busy", "since": now - 2, "row": 7,
                           "task": "resize.", "done": 1, "failed": 0},
                          {"slot": "alice/2", "state": "idle", "since": now - 4, "done": 0,
                           "failed": 0}]})
    state.feed({"kind": "snapshot", "worker": "bob", "host": "h2", "time": now - 30,
                "slots": [{"slot": "bob", "state": "idle", "since": now - 40}]})
    for n, outcome in enumerate(["done", "dead"]):
        state.feed({"kind": "task", "id": f"e{n}", "run_id": "r1", "worker": "alice/1",
                    "row": n + 1, "task": "x", "outcome": outcome, "started": now - 3,
                    "finished": now - 1, "reason": "boom" if outcome == "dead" else ""})
    state.feed({"kind": "task", "id": "e0", "run_id": "r1", "worker": "alice/1", "row": 1,
                "outcome": "done", "started": now - 3, "finished": now - 1})  # sent twice
    screen = "\n".join(state.screen(now, width=200))
    assert 'busy on row 7 "resize." for 2 s' in screen
    assert "idle for 4 s" in screen and "gone (not heard from for 30 s)" in screen
    assert "done 1/3" in screen and "dead 1" in screen
    assert "boom" in screen and "updated " in screen
    line = state.line(now)
    assert "\n" not in line and "alice/1 busy row 7" in line and "bob gone" in line
    state.counts = QueueCounts(ready=0, retry=0, dead=1, consumers=1)
    assert not state.all_done(now), "the queue is empty but row 7 is in hand (2 of 3 settled)"
    state.feed({"kind": "task", "id": "e2", "run_id": "r1", "worker": "alice/1", "row": 7,
                "outcome": "done", "started": now - 2, "finished": now})
    assert not state.all_done(now), "the last snapshot still shows alice/1 busy"
    state.feed({"kind": "snapshot", "worker": "alice", "host": "h1", "time": now,
                "slots": [{"slot": "alice/1", "state": "idle", "since": now},
                          {"slot": "alice/2", "state": "idle", "since": now - 4}]})
    assert state.all_done(now), "3 of 3 settled, nothing queued, no slot busy"
    state.counts = QueueCounts(ready=0, retry=1, dead=1, consumers=1)
    assert not state.all_done(now), "a task waits in .retry"


def test_the_live_view_remembers_a_bounded_number_of_event_ids():
    state = LiveState("q")
    now = time.time()
    for n in range(SEEN_IDS + 20_000):
        state.feed({"kind": "task", "id": f"e{n}", "run_id": "r1", "outcome": "done",
                    "started": now, "finished": now})
    assert len(state._seen) == SEEN_IDS, "memory does not grow with every event seen"
    state.feed({"kind": "task", "id": f"e{SEEN_IDS + 19_000}", "run_id": "r1",
                "outcome": "done", "started": now, "finished": now})  # a recent one, resent
    assert state.done == SEEN_IDS + 20_000, "a resent recent event is still counted once"


def test_until_done_needs_watch(logs):
    result = run_script("task_report.py", "--until-done", log_dir=logs)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--until-done needs --watch" in result.stderr
