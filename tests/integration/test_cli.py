"""Process start: a bad setting stops each entry point with one line naming the variable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(argv, tmp_path, **env):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CBANDWIDTH_") and k != "NODE_NAME"}
    return subprocess.run(argv, env={**clean, **env}, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("command", [
    ["celery", "-A", "workers", "worker"],
    ["celery", "-A", "workers", "worker", "-Q", "results"],
    ["celery", "-A", "workers", "beat"],
    ["cloud-bandwidth", "config"],
])
@pytest.mark.parametrize("variable, value", [
    ("CBANDWIDTH_POLL_LENGTH", "-3"),
    ("CBANDWIDTH_PERF_SERVERS", ":::,"),
    ("CBANDWIDTH_TOOL", "ping"),
])
def test_bad_setting_stops_the_process_with_one_line(tmp_path, command, variable, value):
    run = _run([str(BIN / command[0]), *command[1:]], tmp_path, **{variable: value})
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_config_reads_a_dotenv_file_in_the_working_directory(tmp_path):
    (tmp_path / ".env").write_text("CBANDWIDTH_POLL_INTERVAL=42\nNODE_NAME=from-dotenv\n")
    run = _run([str(BIN / "cloud-bandwidth"), "config"], tmp_path,
               CBANDWIDTH_REDIS_URL="redis://:hunter2@127.0.0.1:6399/0")
    assert run.returncode == 0, run.stderr
    settings = {parts[0]: parts[1] if len(parts) > 1 else ""
                for parts in (line.split(None, 1) for line in run.stdout.splitlines())}
    assert settings["poll_interval_s"].strip() == "42"
    assert settings["node_name"].strip() == "from-dotenv"
    assert "hunter2" not in run.stdout and "***" in settings["redis_url"]


COMMANDS = [["config"], ["nodes"], ["test", "h1", "h2"], ["matrix"], ["matrix", "--watch"],
            ["status"], ["lab"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(tmp_path, command):
    run = _run([str(BIN / "cloud-bandwidth"), command[0], "--help"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Example" in run.stdout and f"cloud-bandwidth {command[0]}" in run.stdout


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] not in ("config", "lab")],
                         ids=lambda c: " ".join(c))
def test_redis_unreachable_is_one_line_and_exit_3(tmp_path, command):
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    run = _run([str(BIN / "cloud-bandwidth"), *command], tmp_path,
               CBANDWIDTH_REDIS_URL="redis://:pw@127.0.0.1:1/0")
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and "cannot reach Redis at redis://:***@127.0.0.1:1/0" \
        in run.stderr
    assert "Traceback" not in run.stderr and "pw@" not in run.stderr


@pytest.mark.parametrize("command", [["config"], ["--help"], ["test", "--help"]],
                         ids=lambda c: " ".join(c))
def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(tmp_path, command):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CBANDWIDTH_")}
    with subprocess.Popen([str(BIN / "cloud-bandwidth"), *command], env=clean,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path) as process:
        process.stdout.close()  # as `| head -1` does once it has what it wants
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) != 0
    assert stderr == ""
