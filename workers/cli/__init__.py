"""`cloud-bandwidth`: the operator's command line.

  config   the effective configuration
  nodes    the node agents in the registry
  test     run one test now and watch it (`cloud-bandwidth test h3 h7`)
  matrix   the latest rate of every flow, source x destination
  status   the scheduler at a glance; non-zero exit past thresholds
  lab      the local lab (namespaced hosts, Redis, Graphite, agents, beat)
  simulate the real scheduler with N virtual nodes and a null tool (scale benchmark)

Everything here loads only in this command: the node agent and beat never import Rich.
Exit statuses: 0 ok, 1 failed (or past a threshold), 2 bad usage / unknown node / bad
setting, 3 Redis unreachable, 4 timed out, 130 interrupted.
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import click

from workers import config
from workers.cli.ui import CliError, Exit

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Env:
    """What every command needs, made on first use: the settings and a Redis client that
    answered a PING (so an unreachable Redis is one line, not a traceback later)."""

    def __init__(self):
        self._settings: config.Settings | None = None
        self._redis = None

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            self._settings = config.exit_on_error(config.load)
        return self._settings

    @property
    def redis(self):
        if self._redis is None:
            from workers import store

            client = store.client(self.settings.redis_url)
            client.ping()
            self._redis = client
        return self._redis

    @property
    def app(self):
        from workers import app

        self.settings  # a bad setting stops here with its one line
        return app


pass_env = click.make_pass_decorator(Env, ensure=True)


@click.group(context_settings=CONTEXT, help=__doc__.split("\n\n")[0] + """

\b
Examples:
  cloud-bandwidth test h3 h7          # is h3 -> h7 slow? measure it now
  cloud-bandwidth matrix              # every flow's latest rate; --watch, --json, --csv
  cloud-bandwidth status || page-me   # scheduler health; exit 1 past thresholds
""")
def cli():
    pass


@cli.command("config", context_settings=CONTEXT)
@pass_env
def config_command(env: Env):
    """Print the effective configuration (secrets masked).

    \b
    Example:
      CBANDWIDTH_POLL_INTERVAL=60 cloud-bandwidth config | grep poll
    """
    rows = env.settings.describe()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


@cli.command("nodes", context_settings=CONTEXT)
@pass_env
def nodes_command(env: Env):
    """List the node agents in the registry: address, heartbeat age, health, tasks, tools.

    \b
    Example:
      cloud-bandwidth nodes
    """
    import time

    from rich.table import Table

    from workers import registry
    from workers.cli.ui import console

    entries = registry.nodes(env.redis)
    now = time.time()
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ADDRESS", "AGE", "HEALTH", "TASKS", "LAST TASK", "TOOLS"):
        table.add_column(column, justify="right" if column in ("AGE", "TASKS") else "left")
    for node in entries:
        age = now - node.get("heartbeat", 0)
        late = age > 2 * env.settings.heartbeat_interval_s
        last = node.get("last_received")
        table.add_row(node["name"], node["address"], f"{age:.1f}s",
                      "[yellow]late[/]" if late else "[green]ok[/]", str(node.get("received", 0)),
                      f"{now - last:.0f}s ago" if last else "never",
                      ",".join(node.get("tools", [])))
    out = console()
    out.print(table)
    if not entries:
        out.print("(no node agent registered)")


@cli.command("test", context_settings=CONTEXT)
@click.argument("source")
@click.argument("target")
@click.option("--tool", type=click.Choice(("iperf3", "iperf2", "netperf")),
              help="test tool (default: the agent's CBANDWIDTH_TOOL)")
@click.option("--length", type=click.IntRange(1, 3600), help="seconds per direction")
@click.option("--parallel", type=click.IntRange(1, 128), help="parallel streams")
@click.option("--protocol", type=click.Choice(("tcp", "udp")))
@click.option("--directions", type=click.Choice(("both", "download", "upload")),
              help="download: SOURCE sends; upload: TARGET sends")
@click.option("--udp-bandwidth", help="offered UDP load, e.g. 500M")
@click.option("--port", type=click.IntRange(1, 65535), help="server port on TARGET")
@click.option("--bind-address", help="local address on SOURCE to send from")
@click.option("--name", help="metric name (default: TARGET's node name, or its address)")
@click.option("--timeout", type=click.FloatRange(1), help="seconds to wait for the result "
              "(default: the longest the test can take, lock waits and requeues included)")
@click.option("--json", "as_json", is_flag=True,
              help="print the result JSON, exactly as `celery -A workers result <id>`")
@pass_env
def test_command(env: Env, source: str, target: str, as_json: bool, timeout: float | None,
                 **options):
    """Run one test from SOURCE to TARGET now, on SOURCE's node agent, and show it as it
    goes: queued, waiting for the lock (and on whom), each direction, then the result.

    SOURCE is a registered node (name or address); TARGET is a registered node or an address
    (an IP, or a DNS name with a dot). Exit 0 when every direction measured, 1 when partial
    or failed (the reason on stderr), 4 when no result came in time. Ctrl-C revokes the test
    if it has not started.

    \b
    Examples:
      cloud-bandwidth test h3 h7
      cloud-bandwidth test h3 198.18.0.17 --tool iperf2 --length 10 --directions upload
      cloud-bandwidth test h3 h7 --json | jq .download.bits_per_second
    """
    from workers.cli import adhoc

    return adhoc.run(env, source, target, options, as_json=as_json, timeout=timeout)


@cli.command("matrix", context_settings=CONTEXT)
@click.option("--watch", is_flag=True, help="redraw as results arrive (Ctrl-C stops)")
@click.option("--json", "as_json", is_flag=True, help="every flow as JSON")
@click.option("--csv", "as_csv", is_flag=True, help="every flow as CSV")
@click.option("--all", "show_all", is_flag=True,
              help="every column, in pages, when the matrix is wider than the terminal")
@click.option("--sort", type=click.Choice(("auto", "name", "worst")), default="auto",
              show_default=True, help="row and column order; auto: by name when it fits, "
                                      "else worst first")
@click.option("--stale-after", type=click.FloatRange(1),
              help="seconds after which a flow's sample is stale (default: 3 sampling periods)")
@pass_env
def matrix_command(env: Env, watch: bool, as_json: bool, as_csv: bool, show_all: bool,
                   sort: str, stale_after: float | None):
    """The latest rate of every mesh flow, source (rows) x destination (columns), coloured
    against each flow's own recent median; failed and stale cells marked, with their reason,
    age and since when below the matrix. Read from Redis (cbw:flows:latest, written by the
    agents as they hand results over): one scan, not one query per pair.

    \b
    Examples:
      cloud-bandwidth matrix
      cloud-bandwidth matrix --watch
      cloud-bandwidth matrix --csv > flows.csv
      cloud-bandwidth matrix --json | jq '.flows[] | select(.state != "ok")'
    """
    from workers.cli import matrix

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    return matrix.run(env, watch=watch, as_json=as_json, as_csv=as_csv, show_all=show_all,
                      sort=sort, stale_after=stale_after)


@cli.command("status", context_settings=CONTEXT)
@click.option("--min-coverage", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="exit 1 when the last cycle measured less than this share of its tests")
@click.option("--max-age", type=click.FloatRange(1),
              help="exit 1 when a flow's newest good sample is older than this many seconds "
                   "(default: 3 sampling periods)")
@click.option("--json", "as_json", is_flag=True, help="the same as JSON")
@pass_env
def status_command(env: Env, min_coverage: float, max_age: float | None, as_json: bool):
    """The scheduler at a glance: the current cycle (schedule, done / planned, elapsed vs
    its lower bound, failures and skips by reason), the last cycle's coverage, the oldest
    flow sample, and agents whose heartbeat is late or that left. Exit 1 when coverage or
    sample age is past its threshold (the reasons on stderr): usable from cron or as a
    readiness check.

    \b
    Examples:
      cloud-bandwidth status
      cloud-bandwidth status --min-coverage 1 --max-age 900 || echo unhealthy
    """
    from workers.cli import status

    return status.run(env, min_coverage=min_coverage, max_age=max_age, as_json=as_json)


@cli.command("lab", context_settings=CONTEXT)
@click.option("--hosts", type=int, default=4, show_default=True, help="number of hosts")
@click.option("--rates", default="100,200,300,400", show_default=True,
              help="per-host shaped rates in Mbit/s, comma separated")
@click.option("--interval", type=int, default=20, show_default=True,
              help="seconds between cycles")
@click.option("--length", type=int, default=2, show_default=True,
              help="seconds per test direction")
@click.option("--tool", default="iperf3", type=click.Choice(("iperf3", "iperf2", "netperf")),
              show_default=True)
@click.option("--schedule", default="mesh", type=click.Choice(("mesh", "star")),
              show_default=True,
              help="mesh: every pair in rounds; star: h1 polls the others")
@click.option("--duration", type=float, default=0, show_default=True,
              help="stop after this many seconds (0: run until Ctrl-C)")
def lab_command(**options):
    """Run the local lab: namespaced hosts, Redis, Graphite, node agents, result handler and
    beat (needs root). Ctrl-C stops it and cleans up.

    \b
    Example:
      cloud-bandwidth lab --hosts 6 --rates 50,100,200 --tool netperf
    """
    from lab.demo import run_demo

    return run_demo(SimpleNamespace(**options))


@cli.command("simulate", context_settings=CONTEXT)
@click.option("--nodes", type=click.IntRange(2, 20_000), default=100, show_default=True,
              help="virtual node agents")
@click.option("--schedule", type=click.Choice(("sampled", "mesh")), default="sampled",
              show_default=True)
@click.option("--cycles", type=click.IntRange(1, 10_000), default=3, show_default=True)
@click.option("--hold-ms", type=click.FloatRange(0, 600_000), default=200, show_default=True,
              help="how long the null tool holds each test (both directions)")
@click.option("--zones", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="spread the nodes over this many zones (0: unlabelled)")
@click.option("--sample-peers", type=click.IntRange(1, 10_000), default=3, show_default=True,
              help="k of the sampled schedule (CBANDWIDTH_SAMPLE_PEERS)")
@click.option("--processes", type=click.IntRange(0, 64), default=0,
              help="agent processes (default: one per 250 nodes, at least 2)")
@click.option("--cycle-limit", type=click.FloatRange(1), default=600, show_default=True,
              help="seconds after which a cycle is cut short (reported as partial)")
@click.option("--interval", type=click.IntRange(0, 86_400), default=0, show_default=True,
              help="start a cycle every this many seconds, as beat does "
                   "(CBANDWIDTH_POLL_INTERVAL); 0: back to back")
@click.option("--set", "extra", multiple=True, metavar="CBANDWIDTH_NAME=VALUE",
              help="a setting for every process (repeatable), e.g. "
                   "CBANDWIDTH_VISIBILITY_TIMEOUT=90")
@click.option("--redis-url", help="use this (empty, disposable) Redis instead of a private "
                                  "redis-server; it is FLUSHED")
@click.option("--json", "as_json", is_flag=True, help="the whole report as JSON")
@click.option("--output", type=click.Path(dir_okay=False, writable=True),
              help="also write the JSON report here")
def simulate_command(nodes, schedule, cycles, hold_ms, zones, sample_peers, processes,
                     cycle_limit, interval, extra, redis_url, as_json, output):
    """Run the real control plane (registry, beat's planner and cycles, locks, ledger, result
    handler, carbon) with NODES virtual node agents in a few processes and a null tool that
    holds each test for --hold-ms instead of sending traffic. Prints per cycle: planned and
    done, makespan against the lower bound, hand-off gaps, Redis commands and time per test,
    keys and memory, beat's emit time, the result handler's backlog. Exit 1 when a node was
    in two tests at once or a cycle's outcomes do not add up to its plan.

    \b
    Example:
      cloud-bandwidth simulate --nodes 1000 --schedule sampled --cycles 5 --hold-ms 1000
      cloud-bandwidth simulate --nodes 300 --cycles 40 --interval 10 \\
          --set CBANDWIDTH_VISIBILITY_TIMEOUT=90 --set CBANDWIDTH_MAX_ATTEMPTS=1
    """
    from workers.cli import simulate
    from workers.simulate import Options

    return simulate.run(Options(nodes=nodes, schedule=schedule, cycles=cycles, hold_ms=hold_ms,
                                zones=zones, sample_peers=sample_peers, processes=processes,
                                redis_url=redis_url, cycle_limit_s=cycle_limit,
                                interval_s=interval, settings=_assignments(extra)),
                        as_json, output)


def _assignments(texts) -> dict[str, str]:
    out = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{text!r}: expected NAME=VALUE", param_hint="--set")
        out[name.strip()] = value.strip()
    return out


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis
    from kombu.exceptions import OperationalError

    return redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError


def main(argv: list[str] | None = None) -> int:
    """The console script. Returns the exit status; never a traceback for a closed pipe, an
    unreachable Redis or Ctrl-C."""
    try:
        try:
            status = cli.main(args=argv, prog_name="cloud-bandwidth", standalone_mode=False)
        except click.exceptions.Exit as exc:
            status = exc.exit_code
        except click.ClickException as exc:
            exc.show()
            status = exc.exit_code
        except click.exceptions.Abort:
            status = Exit.INTERRUPTED
        except KeyboardInterrupt:
            status = Exit.INTERRUPTED
        except CliError as exc:
            _error(str(exc))
            status = exc.code
        except _redis_errors() as exc:
            settings = config.exit_on_error(config.load)
            _error(f"cannot reach Redis at {config.mask_url(settings.redis_url)}: "
                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            status = Exit.UNREACHABLE
        sys.stdout.flush()
        return status if isinstance(status, int) else Exit.OK
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing more. Python would flush stdout again
        # at exit and fail the same way, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.PIPE_CLOSED


def _error(message: str) -> None:
    try:
        print(f"cloud-bandwidth: {message}", file=sys.stderr, flush=True)
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    sys.exit(main())
