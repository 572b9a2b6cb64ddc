import sys
import time

import pytest

from workers import runners
from workers.measurement import TOOLS, Reason
from workers.measurement import TestSpec as Spec  # not Test*: pytest would collect it
from workers.runners import base


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def spec(**kwargs) -> Spec:
    values = {"tool": "iperf3", "target": "127.0.0.1", "port": 5201, "length_s": 1} | kwargs
    return Spec(**values)


# --- run_tool ------------------------------------------------------------------------------

def test_run_tool_returns_output_and_status():
    before = time.time()
    outcome = base.run_tool(python("import sys; print('out'); print('err', file=sys.stderr); "
                                   "sys.exit(3)"), timeout_s=10)
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (3, "out\n", "err\n")
    assert not outcome.timed_out and not outcome.missing
    assert before <= outcome.start <= outcome.end <= time.time()


def test_run_tool_never_uses_a_shell():
    outcome = base.run_tool(python("import sys; print(sys.argv[1:])") + ["a; echo pwned", "$HOME"],
                            timeout_s=10)
    assert outcome.stdout.strip() == "['a; echo pwned', '$HOME']"


def test_run_tool_gives_no_stdin():
    outcome = base.run_tool(python("import sys; print(repr(sys.stdin.read()))"), timeout_s=10)
    assert outcome.stdout.strip() == "''"


def test_missing_binary():
    outcome = base.run_tool(["cloud-bandwidth-no-such-tool", "-c", "x"], timeout_s=10)
    assert outcome.missing and outcome.returncode is None
    assert "cloud-bandwidth-no-such-tool" in outcome.stderr


def test_timeout_kills_the_whole_process_group(tmp_path):
    # The tool forks a grandchild that would outlive a plain kill of the tool itself.
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    outcome = base.run_tool(python(code), timeout_s=1.0)
    assert time.monotonic() - started < 5
    assert outcome.timed_out and outcome.returncode == -9
    assert outcome.stdout == "started\n"  # output written before the kill is kept
    grandchild = int(pidfile.read_text())
    # SIGKILL is delivered at once, but a loaded machine may take a moment to finish the exit.
    deadline = time.monotonic() + 3
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(grandchild)


def test_timeout_with_output_still_flowing():
    outcome = base.run_tool(python("import time\nwhile True:\n print('x' * 100, flush=True)\n"
                                   " time.sleep(0.001)"), timeout_s=0.5)
    assert outcome.timed_out and outcome.stdout.startswith("x")


def test_run_tools_runs_concurrently():
    started = time.monotonic()
    outcomes = base.run_tools([python("import time; time.sleep(0.5); print(1)"),
                               python("import time; time.sleep(0.5); print(2)")], timeout_s=10)
    assert time.monotonic() - started < 0.95
    assert [o.stdout.strip() for o in outcomes] == ["1", "2"]


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- classification ------------------------------------------------------------------------

@pytest.mark.parametrize("text, reason", [
    ("the server is busy running a test. try again later", Reason.BUSY),
    ("unable to connect to server: Connection refused", Reason.UNREACHABLE),
    ("tcp connect failed: Connection refused", Reason.UNREACHABLE),
    ("unable to connect to server: Connection timed out", Reason.UNREACHABLE),
    ("unable to connect to server: No route to host", Reason.UNREACHABLE),
    ("connect failed: Network is unreachable", Reason.UNREACHABLE),
    ("unable to connect to server: Name or service not known", Reason.UNREACHABLE),
    ("nonexistent.invalid: Unknown host", Reason.UNREACHABLE),
    ("Netperf could not resolve nonexistent.invalid as a host name", Reason.UNREACHABLE),
    ("establish control: are you sure there is a netserver listening on 10.0.0.1 at port 1?",
     Reason.UNREACHABLE),
    ("unable to connect to server: Cannot assign requested address", Reason.ERROR),
    ("bind failed: Cannot assign requested address", Reason.ERROR),
    ("control socket has closed unexpectedly", None),
    ("", None),
])
def test_classify_error(text, reason):
    assert base.classify_error(text) == reason


def test_failure_keeps_the_message_once_per_line():
    outcome = base.ProcessOutcome(0, "", "", 10.0, 11.0)
    result = base.failure(outcome, "tcp connect failed: Connection refused\n" * 4, Reason.ERROR)
    assert (result.status, result.reason) == ("failed", "unreachable")
    assert result.error == "tcp connect failed: Connection refused"
    assert (result.start, result.end) == (10.0, 11.0)


def test_failure_falls_back_to_the_default_reason():
    outcome = base.ProcessOutcome(1, "", "", 10.0, 11.0)
    assert base.failure(outcome, "something odd", Reason.PARSE_ERROR).reason == "parse_error"


def test_common_failures():
    missing = base.ProcessOutcome(None, "", "iperf3: No such file or directory", 1.0, 1.0,
                                  missing=True)
    timed_out = base.ProcessOutcome(-9, "", "", 1.0, 12.0, timed_out=True)
    assert base.common_failure(missing, "iperf3").reason == "tool_missing"
    assert base.common_failure(timed_out, "iperf3").reason == "timeout"
    assert base.common_failure(base.ProcessOutcome(0, "", "", 1.0, 2.0), "iperf3") is None


# --- specs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"target": "1.2.3.4; touch pwned"}, "not an IP address or DNS name"),
    ({"bind_address": "-x"}, "not an IP address or DNS name"),
    ({"port": 0}, "port"),
    ({"port": 70000}, "port"),
    ({"length_s": 0}, "length"),
    ({"length_s": float("nan")}, "length"),
    ({"parallel": 0}, "parallel"),
    ({"protocol": "sctp"}, "protocol"),
    ({"protocol": "udp", "udp_bandwidth_bps": 0}, "UDP"),
])
def test_check_spec_refuses(kwargs, words):
    with pytest.raises(ValueError, match=words):
        base.check_spec(spec(**kwargs))


def test_check_spec_returns_validated_addresses():
    assert base.check_spec(spec(target="[::1]", bind_address="::1")) == ("::1", "::1")


@pytest.mark.parametrize("length, seconds", [(1, 1), (0.2, 1), (2.0, 2), (2.5, 3)])
def test_whole_seconds_rounds_up(length, seconds):
    assert base.whole_seconds(length) == seconds


@pytest.mark.parametrize("tool", TOOLS)
def test_a_bad_target_is_a_bad_request_not_a_run(tool, monkeypatch):
    monkeypatch.setattr(base, "run_tool", pytest.fail)  # nothing may be started
    monkeypatch.setattr(base, "run_tools", pytest.fail)
    result = runners.run(spec(tool=tool, target="$(reboot)"))
    assert (result.status, result.reason) == ("failed", "bad_request")
    assert "not an IP address or DNS name" in result.error


def test_every_tool_has_a_runner():
    assert set(runners.RUNNERS) == set(TOOLS)


def test_unknown_tool():
    with pytest.raises(ValueError, match="unknown tool 'ping'"):
        runners.run(spec(tool="ping"))


def test_dispatches_on_the_tool(monkeypatch):
    seen = []
    monkeypatch.setitem(runners.RUNNERS, "iperf2", lambda s: seen.append(s) or "result")
    assert runners.run(spec(tool="iperf2")) == "result"
    assert seen == [spec(tool="iperf2")]
