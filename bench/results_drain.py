"""The result handler's throughput into a real carbon-cache, and a carbon outage.

    .venv/bin/python -m bench.results_drain [--results 20000] [--outage-s 60] [--rate 50]

A benchmark, run on demand (root not needed; loopback only): nothing is asserted. With a
private redis-server and a private carbon-cache (lab.services; carbon counts what it receives,
CARBON_METRIC_INTERVAL = 1), it starts the real result handler, `celery -A workers worker -Q
results`, and

- throughput: adds `--results` mesh results (both directions with details and lock wait,
  11 datapoints each, each flow at its own seconds) to the result stream, then measures how fast
  the handler drains them: from its first delivered entry to an empty stream, in datapoints per
  second. Beside it, in the same run, the drainer in this process with a batch of 1 entry
  (one carbon write and one acknowledgement per result) and of the default batch, on the same
  data: the ratio is what batching buys. Carbon's own count of what it received is checked
  against the datapoints sent;
- outage: stops carbon, adds `--rate` results a second for `--outage-s` seconds, starts carbon
  again and waits until the stream is empty; then compares carbon's received count with
  results × datapoints, and samples the handler's resident memory (main process and pool
  children, /proc) every second across it.

The output is Markdown.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench import common
from lab.process import LabProcess, launch
from lab.services import Carbon, RedisServer
from lab.stack import FAST_START
from workers import config, metrics, results
from workers.carbon import CarbonClient

_RECEIVED = r"""
import glob, json, os, sys, whisper
since = int(sys.argv[2])
total = 0
for f in glob.glob(os.path.join(sys.argv[1], "carbon", "agents", "*", "metricsReceived.wsp")):
    (start, end, step), values = whisper.fetch(f, since)
    total += sum(v for v in values if v is not None)
print(int(total))
"""


def received(carbon: Carbon, since: float) -> int:
    """Datapoints carbon counted as received since `since` (its own metricsReceived)."""
    return int(subprocess.run(["/usr/bin/python3", "-c", _RECEIVED, str(carbon.whisper_dir),
                               str(int(since))], capture_output=True, text=True, check=True,
                              timeout=120).stdout)


def settled_received(carbon: Carbon, since: float, expected: int, timeout: float = 60) -> int:
    """carbon's received count once it stops moving (or reaches `expected`)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = received(carbon, since)
        if now == last and now >= expected:
            return now
        last = now
        time.sleep(2.5)
    return last


def make_result(i: int, base: int, nodes: int = 30) -> dict:
    """The i-th result: flows over `nodes` nodes in turn, each flow's results a second apart."""
    pairs = nodes * (nodes - 1)
    a, b = divmod(i % pairs, nodes - 1)
    b = b + (b >= a)
    at = base + 4 * (i // pairs)
    direction = {"status": "ok", "retransmits": i % 7, "cpu_local_percent": 12.5,
                 "cpu_remote_percent": 8.25}
    return {"status": "ok", "node": f"n{a:02d}", "peer": f"n{b:02d}", "mode": "mesh",
            "name": f"n{b:02d}", "target": "198.18.0.2", "start": at, "end": at + 2,
            "task_id": f"bench-{base}-{i}", "lock": {"wait_s": 0.25},
            "download": dict(direction, bits_per_second=9.4e8 + i, start=at, end=at + 1),
            "upload": dict(direction, bits_per_second=9.3e8 + i, start=at + 1, end=at + 2)}


def fill(r: redis.Redis, settings: config.Settings, n: int, base: int) -> int:
    """Add n results as agents do (results.hand_over's script, pipelined); their datapoints."""
    points = 0
    with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            result = make_result(i, base)
            points += len(metrics.lines_for(result, settings))
            pipe.eval(results._ADD, 4, results.STREAM, f"cbw:task:{result['task_id']}",
                      results.HANDED, results.DROPPED, settings.results_backlog_max, 600,
                      "result", result["task_id"], json.dumps(result))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    return points


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` and its children (the handler's pool), in KiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def start_handler(redis_url: str, carbon: Carbon, log_dir: Path) -> LabProcess:
    env = {"CBANDWIDTH_REDIS_URL": redis_url, "NODE_NAME": "result-handler",
           "CBANDWIDTH_GRAPHITE_ADDRESS": "127.0.0.1",
           "CBANDWIDTH_GRAPHITE_PORT": str(carbon.line_port),
           "CBANDWIDTH_CARBON_RETRY_MAX": "5", "CBANDWIDTH_HEARTBEAT_INTERVAL": "3600"}
    celery = str(Path(sys.executable).with_name("celery"))
    log = log_dir / "handler.log"
    return LabProcess("result-handler", launch(
        [celery, "-A", "workers", "worker", "-Q", "results", "-l", "warning", "-n",
         "results@bench", *FAST_START], log_path=log, env=env, cwd=log_dir), log)


def wait_read(r: redis.Redis, timeout: float) -> tuple[float, float]:
    """(monotonic time the handler first read from the stream, time it had read it all: the
    group's last delivered id is the stream's last id). Each batch is written to carbon before
    the next is read, so this is the time to write all but the last batch; settling
    (acknowledge and delete, after the replay window) follows."""
    def delivered_id() -> str:
        return r.xinfo_groups(results.STREAM)[0]["last-delivered-id"]

    before = delivered_id()
    last_id = r.xinfo_stream(results.STREAM)["last-generated-id"]
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = delivered_id()
        now = time.monotonic()
        if first is None and current != before:
            first = now
        if first is not None and current == last_id:
            return first, now
        time.sleep(0.005)
    raise TimeoutError(f"the handler did not read the stream within {timeout} s")


def wait_drained(r: redis.Redis, timeout: float) -> None:
    """Until the stream is empty: every entry written and settled."""
    deadline = time.monotonic() + timeout
    while r.xlen(results.STREAM):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stream did not drain within {timeout} s")
        time.sleep(0.1)


def in_process(r: redis.Redis, carbon: Carbon, settings: config.Settings, n: int, base: int,
               batch: int) -> float:
    """Datapoints per second of the drainer in this process with `batch`, on n results."""
    points = fill(r, settings, n, base)
    client = CarbonClient("127.0.0.1", carbon.line_port, 5.0)
    drainer = results.Drainer(r, client, settings, f"bench-{batch}", batch=batch,
                              replay_window_s=0)
    drainer._next_status = float("inf")
    start = time.perf_counter()
    while r.xlen(results.STREAM):
        drainer.step(block_ms=10)
    elapsed = time.perf_counter() - start
    client.close()
    return points / elapsed


def report(argv: list[str], n: int, outage_s: int, rate: int) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = common.machine_facts(("redis-server", common.first_line(["redis-server",
                                                                     "--version"])))
    with RedisServer() as server, Carbon(extra={"CARBON_METRIC_INTERVAL": "1"}) as carbon:
        os.environ.update(CBANDWIDTH_REDIS_URL=server.url, NODE_NAME="bench",
                          CBANDWIDTH_GRAPHITE_ADDRESS="127.0.0.1",
                          CBANDWIDTH_GRAPHITE_PORT=str(carbon.line_port))
        config._settings = None
        settings = config.get()
        r = redis.Redis.from_url(server.url, decode_responses=True)
        base = int(time.time()) - 5 * 3600
        # In this process, batch 1 against the default batch, on the same amount of data.
        small = min(n, 3000)
        one = in_process(r, carbon, settings, small, base - 3600, 1)
        batched = in_process(r, carbon, settings, small, base - 1800, results.RESULTS_BATCH)
        common.log(f"in process: batch 1 {one:,.0f}/s, batch {results.RESULTS_BATCH} "
                   f"{batched:,.0f}/s")

        since = time.time() - 1
        points = fill(r, settings, n, base)
        common.log(f"{n:,} results ({points:,} datapoints) in the stream; starting the handler")
        handler = start_handler(server.url, carbon, carbon.state_dir)
        try:
            first, last = wait_read(r, 200)
            rate_handler = points / max(last - first, 1e-6)
            wait_drained(r, 60)
            common.log(f"handler: {rate_handler:,.0f} datapoints/s")
            got = settled_received(carbon, since, points)

            # The outage.
            carbon.stop()
            since_outage = time.time() - 1
            delivered_before = int(r.get(results.DELIVERED) or 0)
            rss = [rss_kb(handler.pid)]
            outage_base = base + 3600
            added = 0
            t0 = time.monotonic()
            per_result = len(metrics.lines_for(make_result(0, 0), settings))
            while time.monotonic() - t0 < outage_s:
                with r.pipeline(transaction=False) as pipe:
                    for _ in range(rate):
                        result = make_result(added, outage_base)
                        results_args = (results.STREAM, f"cbw:task:{result['task_id']}",
                                        results.HANDED, results.DROPPED,
                                        settings.results_backlog_max, 600, "result",
                                        result["task_id"], json.dumps(result))
                        pipe.eval(results._ADD, 4, *results_args)
                        added += 1
                    pipe.execute()
                rss.append(rss_kb(handler.pid))
                time.sleep(max(0.0, 1 - (time.monotonic() - t0) % 1))
            backlog_peak = r.xlen(results.STREAM)
            stream_bytes = int(r.memory_usage(results.STREAM, samples=0) or 0)
            carbon.start()
            wait_drained(r, 300)
            rss.append(rss_kb(handler.pid))
            expected = added * per_result
            got_outage = settled_received(carbon, since_outage, expected)
            delivered = int(r.get(results.DELIVERED) or 0) - delivered_before
        finally:
            handler.stop(30)
    lines = [
        "### Result handler: throughput into carbon, and a carbon outage",
        "",
        f"Command: `{common.command_line('bench.results_drain', argv)}`",
        f"Date: {date}.",
        "",
        "Machine:",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        "A private redis-server and carbon-cache (lab.services; carbon counts what it receives"
        " every second). Results are mesh results with both directions, details and lock wait"
        f" ({per_result} datapoints each), added to the stream as agents add them.",
        "",
        "| what | value |",
        "|---|---:|",
        f"| real result handler (`celery -A workers worker -Q results`), {n:,} results = "
        f"{points:,} datapoints | **{rate_handler:,.0f} datapoints/s** |",
        f"| carbon's count of datapoints received (expected {points:,}; + the handler's 3 "
        f"status lines) | {got:,} |",
        f"| drainer in-process, batch of {results.RESULTS_BATCH} entries, {small:,} results | "
        f"{batched:,.0f} datapoints/s |",
        f"| drainer in-process, batch of 1 entry (a write and an ack per result) | "
        f"{one:,.0f} datapoints/s |",
        f"| ratio batch {results.RESULTS_BATCH} / batch 1 | {batched / one:.1f}× |",
        f"| outage: carbon stopped {outage_s} s, results added meanwhile ({rate}/s) | "
        f"{added:,} |",
        f"| backlog at the end of the outage | {backlog_peak:,} entries, "
        f"{stream_bytes / 2**20:,.1f} MB in Redis ({stream_bytes / max(backlog_peak, 1):,.0f}"
        " B per result) |",
        f"| entries delivered after carbon came back | {delivered:,} |",
        f"| carbon's count of datapoints received (expected {added:,} × {per_result} = "
        f"{expected:,}) | {got_outage:,} |",
        f"| handler RSS (main + pool child): before / peak / after the outage | "
        f"{rss[0] / 1024:.1f} / {max(rss) / 1024:.1f} / {rss[-1] / 1024:.1f} MB |",
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.results_drain",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=common.bounded_int(100, 1_000_000), default=20_000)
    parser.add_argument("--outage-s", type=common.bounded_int(1, 3600), default=60)
    parser.add_argument("--rate", type=common.bounded_int(1, 10_000), default=50)
    args = parser.parse_args(argv)
    sys.stdout.write(report(argv, args.results, args.outage_s, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
