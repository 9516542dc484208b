"""Bad input of every kind: one clear line on stderr, the right exit code, no traceback, and
never the password."""

from __future__ import annotations

import pika
import pytest

from tests.helpers import MAIN_URL, queue_state, run_script, write_csv

pytestmark = pytest.mark.windows  # the Windows tier runs this whole file (scripts/windows.sh)


def assert_one_clear_line(result, code: int, *phrases: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize("script", ["emitter_of_tasks.py", "listening_worker.py"])
def test_wrong_password(script, queue, logs):
    result = run_script(script, "--queue", queue, "--url",
                        "amqp://guest:s3cret@127.0.0.1:5672/%2F", "--message", "x", log_dir=logs) \
        if script.startswith("emitter") else run_script(
            script, "--queue", queue, "--url", "amqp://guest:s3cret@127.0.0.1:5672/%2F",
            log_dir=logs)
    assert_one_clear_line(result, 4, "refused the login of user 'guest'", "guest:***@")


def test_unknown_vhost(queue, logs):
    result = run_script("listening_worker.py", "--queue", queue, "--url",
                        "amqp://guest:guest@127.0.0.1:5672/nowhere", log_dir=logs)
    assert_one_clear_line(result, 4, "virtual host 'nowhere'")


def test_port_with_no_broker_gives_up_after_connect_timeout(queue, logs):
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "x",
                        "--url", "amqp://guest:s3cret@127.0.0.1:9/%2F", "--connect-timeout", "1.5",
                        log_dir=logs)
    assert_one_clear_line(result, 3, "no RabbitMQ broker answered", "within 1.5 s",
                          "connection refused")
    assert "retrying in" in result.stdout


@pytest.mark.parametrize("url", ["http://localhost/", "amqp://guest:s3cret@host:notaport/"])
def test_unparseable_url(url, queue, logs):
    result = run_script("listening_worker.py", "--queue", queue, "--url", url, log_dir=logs)
    assert_one_clear_line(result, 2, "broker URL")


def test_a_queue_of_the_other_type_is_refused_when_a_type_is_asked_for(queue, logs):
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    connection.channel().queue_declare(queue, durable=True, arguments={"x-max-length": 10})
    connection.close()
    for script, extra in (("emitter_of_tasks.py", ["--message", "x"]),
                          ("listening_worker.py", [])):
        result = run_script(script, "--queue", queue, "--queue-type", "quorum", *extra,
                            log_dir=logs)
        assert_one_clear_line(result, 4, f"queue {queue!r} already exists as a classic queue",
                              "--queue-type", "--queue")


def test_tutorial_made_queue_is_accepted(queue, logs):
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    connection.channel().queue_declare(queue, durable=True)  # exactly what the tutorial does
    connection.close()
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "x", log_dir=logs)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("content", "phrase"), [
    (b"", "has no tasks"),
    (b"ok.\n\xff\xfe\n", "line 2: not valid UTF-8"),
    (b"ok.\nx\0y\n", "line 2: contains a NUL byte"),
])
def test_bad_csv_exit_2_names_file_and_line(content, phrase, queue, logs, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), log_dir=logs)
    assert_one_clear_line(result, 2, "bad.csv", phrase)


def test_missing_file_and_bad_options(queue, logs, tmp_path):
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                        str(tmp_path / "none.csv"), log_dir=logs)
    assert_one_clear_line(result, 2, "not found")
    result = run_script("listening_worker.py", "--seconds-per-dot", "fast", log_dir=logs)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a number" in result.stderr


def test_oversized_row(queue, logs, tmp_path):
    csv = write_csv(tmp_path / "big.csv", ["fine.", "x" * 200])
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                        "--max-task-bytes", "100", log_dir=logs)
    assert_one_clear_line(result, 2, "big.csv line 2: longer than 100 bytes", "--resume")
    assert queue_state(queue)[0] == 1, "the good row before the bad one is published once"
