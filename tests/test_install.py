"""Installed like any Python tool (issue 19): a wheel built from a clean clone, installed into a
fresh venv with pika from the registry, its commands run from a directory of their own; and the
README's systemd unit, checked and run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, consume_all, queue_state, wait_for

COMMANDS = ("taskqueue-emit", "taskqueue-worker", "taskqueue-report", "taskqueue-control")


def run(*args: object, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def clean_env() -> dict[str, str]:
    """No checkout on the path and no log directory given: what a user's shell has."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "TASKQUEUE_LOG_DIR", "RABBITMQ_URL", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from a clean clone of this repository's HEAD."""
    base = tmp_path_factory.mktemp("install")
    clone = base / "clone"
    run("git", "clone", "--quiet", ROOT, clone)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", base / "dist",
        f"./{clone.name}", cwd=base)
    wheels = list((base / "dist").glob("taskqueue-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheels[0])
    return venv


def test_the_wheel_holds_the_package_only(installed):
    site = next(installed.glob("lib/python*/site-packages"))
    ours = sorted(path.name for path in site.iterdir()
                  if path.name.startswith(("taskqueue", "tests", "bench", "util_logger")))
    assert ours[0] == "taskqueue" and ours[1].startswith("taskqueue-") and len(ours) == 2, ours


def test_the_web_view_is_an_extra_its_pages_come_with_the_wheel(installed, tmp_path, queue):
    """Without the extra: one line saying what to install. With it (what
    ``pip install "taskqueue[web]"`` adds): the server runs and finds its pages and script."""
    import http.client

    from tests.brokers import free_port

    bin_dir, env = installed / "bin", clean_env()
    without = subprocess.run([str(bin_dir / "taskqueue-report"), "--serve", "--no-browser"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert without.returncode == 2 and 'pip install "taskqueue[web]"' in without.stderr
    assert "Traceback" not in without.stderr
    extra = re.search(r'web = \[(.*)\]', (ROOT / "pyproject.toml").read_text())[1]
    run(installed / "bin" / "python", "-m", "pip", "install", "--quiet",
        *re.findall(r'"([^"]+)"', extra))
    port = free_port()
    server = subprocess.Popen([str(bin_dir / "taskqueue-report"), "--serve", "--queue", queue,
                               "--bind", f"127.0.0.1:{port}", "--no-browser"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        token = re.search(r"token=(\S+)", server.stdout.readline())[1]
        for path in ("/", "/static/app.js", "/runs"):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            assert connection.getresponse().status == 200, path
            connection.close()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def test_the_commands_run_a_round_trip_from_any_directory(installed, tmp_path, queue):
    work = tmp_path / "somewhere"
    work.mkdir()
    (work / "tasks.csv").write_text("first\nsecond\nthird\n", encoding="utf-8")
    (work / "mytasks.py").write_text("def shout(text):\n    return text.upper()\n")
    bin_dir, env = installed / "bin", clean_env()
    for command in COMMANDS:
        assert run(bin_dir / command, "--version", cwd=work, env=env).stdout.strip() == \
            f"{command} 0.4.0"
    run(bin_dir / "taskqueue-emit", "--queue", queue, cwd=work, env=env)  # tasks.csv from here
    worker = run(bin_dir / "taskqueue-worker", "--queue", queue, "--name", "installed",
                 "--handler", "mytasks:shout", "--exit-when-idle", "1.5", cwd=work, env=env)
    assert worker.stdout.count("done row") == 3, worker.stdout
    report = run(bin_dir / "taskqueue-report", "--queue", queue, "--csv", "out.csv", cwd=work,
                 env=env)
    assert "3 tasks done by 1 workers" in report.stdout, report.stdout
    results = (work / "out.csv").read_text(encoding="utf-8")
    assert "FIRST" in results and "THIRD" in results, results
    assert (work / "logs" / "listening_worker.log").exists()
    assert (work / "logs" / "emitter_state").is_dir(), "resume points beside the logs"
    assert any((work / "reports").glob(f"{queue}*.svg"))
    site = next(installed.glob("lib/python*/site-packages"))
    written = [p for p in site.rglob("*") if p.name in ("logs", "reports", "emitter_state")]
    assert written == [], "nothing written into the installed package"
    assert queue_state(queue) == (0, 0)


def test_the_git_url_installs_too(tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"git+file://{ROOT}")
    assert run(venv / "bin" / "taskqueue-worker", "--version", env=clean_env()).stdout.strip() \
        == "taskqueue-worker 0.4.0"


def readme_unit() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"```ini\n# /etc/systemd/system/taskqueue-worker@.service\n(.*?)```", text,
                     re.S)[1]


def test_the_readme_systemd_unit_verifies_and_its_exec_start_drains_on_sigterm(
        installed, tmp_path, queue):
    unit = readme_unit()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)[1]
    work = tmp_path / "var-lib"
    work.mkdir()
    (work / "jobs.py").write_text("import time\n\ndef run(text):\n    time.sleep(1)\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("guest:guest\n")
    ours = (unit.replace("/opt/taskqueue/bin/", f"{installed}/bin/")
            .replace("/var/lib/taskqueue", str(work))
            .replace("/var/log/taskqueue", str(tmp_path / "log"))
            .replace("/etc/taskqueue/credentials", str(credentials))
            .replace("rabbit1.example", "127.0.0.1").replace("User=taskqueue", "User=root"))
    if shutil.which("systemd-analyze"):
        path = tmp_path / "taskqueue-worker@.service"
        path.write_text(ours)
        instance = tmp_path / "taskqueue-worker@1.service"
        instance.symlink_to(path)
        verified = subprocess.run(["systemd-analyze", "verify", str(instance)],
                                  capture_output=True, text=True, timeout=60)
        problems = [line for line in verified.stderr.splitlines() if "taskqueue-worker" in line]
        assert verified.returncode == 0 and problems == [], verified.stderr
    # Its ExecStart, as systemd would run it for instance 1 (specifiers expanded), on our queue.
    line = re.search(r"^ExecStart=(.*)$", ours, re.M)[1]
    line = line.replace("%H", "host").replace("%i", "1").replace("%%", "%")
    argv = [*shlex.split(line), "--queue", queue]
    assert exec_start.startswith("/opt/taskqueue/bin/taskqueue-worker ")
    env = {**clean_env(), "TASKQUEUE_LOG_DIR": str(tmp_path / "log")}
    out = tmp_path / "service.out"
    with open(out, "w") as handle:
        service = subprocess.Popen(argv, cwd=work, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "waiting for tasks" in out.read_text(), timeout=60, what="the service")
        run(installed / "bin" / "taskqueue-emit", "--queue", queue, "--message", "a job",
            cwd=work, env=env)
        wait_for(lambda: "received" in out.read_text(), what="the job taken")
        service.send_signal(signal.SIGTERM)  # systemctl stop, with KillMode=mixed
        assert service.wait(timeout=60) == 0, out.read_text()
    finally:
        if service.poll() is None:
            service.kill()
    text = out.read_text()
    assert "done row 1" in text and "stopping after the 1 task(s) in hand" in text, text
    assert consume_all(queue + ".dead") == [] and queue_state(queue)[0] == 0
