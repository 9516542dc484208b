"""The admin-panel offer against a broker node whose management plugin is on."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, script_env


def test_admin_opens_the_panel_without_the_password(panel_node, logs, tmp_path):
    opened = tmp_path / "opened.txt"
    env = script_env(logs)
    env["BROWSER"] = (f"{sys.executable} -c \"import sys; open('{opened}', 'w')"
                      f".write(sys.argv[1])\" %s")
    url = f"amqp://guest:s3cret@127.0.0.1:{panel_node.port}/%2F"
    panel = f"http://127.0.0.1:{panel_node.panel_port}/#/queues"
    result = subprocess.run([sys.executable, str(ROOT / "emitter_of_tasks.py"), "--url", url,
                             "--queue", "admin_q", "--message", "x", "--admin", "--admin-url",
                             panel, "--connect-timeout", "1"], capture_output=True, text=True,
                            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=60)
    # The login fails (wrong password) after the panel was offered: the offer comes first.
    assert f"RabbitMQ admin panel: {panel}" in result.stdout
    assert "does not answer" not in result.stdout
    assert "own dashboard (tasks, workers, results, control): python task_report.py --serve " \
           "--queue admin_q" in result.stdout, "ours is offered beside it"
    assert opened.read_text() == panel
    assert "s3cret" not in result.stdout + result.stderr


def test_the_question_needs_no_select_on_the_console(monkeypatch):
    """Windows cannot select() on console input: the timed question must not depend on it."""
    import io

    from taskqueue import admin

    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert admin.ask_yes_no("Open it?", timeout=5) is True
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert admin.ask_yes_no("Open it?", timeout=5) is False


def test_no_answer_in_time_is_no(capsys):
    import os
    import threading

    from taskqueue import admin

    read_end, write_end = os.pipe()
    silent = open(read_end)  # noqa: SIM115 - closed below, after its reader got EOF
    saved, sys.stdin = sys.stdin, silent
    answers: list[bool] = []
    try:
        asking = threading.Thread(
            target=lambda: answers.append(admin.ask_yes_no("Open it?", timeout=0.5)), daemon=True)
        asking.start()
        # A bound on a hang, not a speed claim: the pipe stays open and silent, so without its
        # 0.5 s timeout the question would wait forever (60x the timeout is no clock race).
        asking.join(timeout=30)
        assert answers == [False], "a silent stdin must end the question as no"
        # Ended by its timeout (it closes the prompt's line), not by an answer it read.
        assert capsys.readouterr().out.endswith("= n): \n")
    finally:
        sys.stdin = saved
        os.close(write_end)  # the question's reader thread reads EOF and lets go of the file
        silent.close()
