"""`cloud-bandwidth test SOURCE TARGET`: one ad-hoc test through Celery, followed as it goes.

The agent publishes the test's state (workers.progress) through the result backend, which
announces every change on the task's Redis channel: this command subscribes before it sends,
so it sees each state as it happens (no polling, no guessing from a timer).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from workers import jobs, registry
from workers.cli import ui
from workers.cli.ui import CliError, Exit
from workers.hosts import ip_version, validate_target
from workers.measurement import DIRECTIONS
from workers.progress import LOCKING, RUNNING

READY = ("SUCCESS", "FAILURE", "REVOKED")
NOT_STARTED = ("PENDING", "RETRY")
TICK_S = 0.2


# --- what to send ------------------------------------------------------------------------


def find_node(nodes: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    """The registered node called `text`, or serving at address `text`."""
    for node in nodes:
        if node["name"] == text:
            return node
    for node in nodes:
        if node.get("address") == text:
            return node
    return None


def build_request(nodes: list[dict[str, Any]], source: str, target: str,
                  options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(source node, tasks.measure kwargs). A target that is neither a registered node nor
    an address (an IP literal, or a DNS name with a dot) is refused: `h99` is a typo, not a
    host to try."""
    source_node = find_node(nodes, source)
    if source_node is None:
        raise CliError(f"no node agent {source!r} is registered (`cloud-bandwidth nodes` lists "
                       f"them); SOURCE must be a node's name or address", Exit.USAGE)
    target_node = find_node(nodes, target)
    if target_node is not None:
        address, name = target_node["address"], target_node["name"]
        port = target_node.get("ports", {}).get(options.get("tool") or "")
    elif ip_version(target) or "." in target:
        try:
            address = validate_target(target)
        except ValueError as exc:
            raise CliError(f"TARGET: {exc}", Exit.USAGE) from None
        name, port = address, None
    else:
        raise CliError(f"no node agent {target!r} is registered and it is not an address "
                       f"(`cloud-bandwidth nodes` lists the nodes)", Exit.USAGE)
    kwargs: dict[str, Any] = {"target": address, "name": options.get("name") or name}
    for option in ("tool", "length", "parallel", "protocol", "directions", "port",
                   "udp_bandwidth", "bind_address"):
        if options.get(option) is not None:
            kwargs[option] = options[option]
    if port and "port" not in kwargs and options.get("tool"):
        kwargs["port"] = port
    return source_node, kwargs


def default_timeout(request: jobs.Request, settings) -> float:
    """The longest the test can take: its run, every lock wait and requeue backoff, and a
    margin for the queue and the hand-over."""
    backoff = sum(1.5 * min(5 * 2 ** k, 60) for k in range(settings.lock_retries))
    return (request.longest_run_s(settings.timeout_margin_s)
            + (settings.lock_retries + 1) * settings.lock_wait_s + backoff + 30)


# --- following it ------------------------------------------------------------------------


def describe_holder(redis, app, task_id: str | None) -> str:
    """Who holds a lock: the holding test's route, from its task's stored state."""
    if not task_id:
        return "another test"
    raw = redis.get(app.backend.get_key_for_task(task_id).decode())
    meta = app.backend.decode_result(raw) if raw else {}
    kwargs = meta.get("kwargs") or {}
    worker = (meta.get("worker") or "").split("@")[-1] or (meta.get("queue") or "?")[5:]
    where = f"{worker} -> {kwargs.get('name') or kwargs.get('target') or '?'}"
    kind = kwargs.get("mode") or "ad-hoc"
    return f"test {task_id[:8]} ({where}, {kind})"


def state_text(state: str, meta: dict[str, Any], queue: str, depth: int | None,
               holder: str | None) -> str:
    if state == "PENDING":
        waiting = f", {depth} message(s) in it" if depth else ""
        return f"queued on {queue}{waiting}"
    if state == "STARTED":
        return f"started on {meta.get('hostname') or queue[5:]}"
    if state == LOCKING:
        return (f"waiting for {meta.get('resource')}, held by {holder or 'another test'} "
                f"(waited {meta.get('waited_s', 0):.0f} s)")
    if state == RUNNING:
        return (f"running {meta.get('direction')} {meta.get('index')}/{meta.get('count')} "
                f"({meta.get('length_s')} s)")
    if state == "RETRY":
        return "resources stayed busy: requeued with backoff"
    if state == "SUCCESS":
        return "done"
    return state.lower()


class LineView:
    """Not a terminal: one line per state change, on stderr."""

    def __init__(self, err):
        self.err = err
        self._last = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def show(self, key: tuple, text: str) -> None:
        if key != self._last:
            self._last = key
            self.err.print(f"{ui.clock(time.time())}  {text}")

    def note(self, text: str) -> None:
        self.err.print(f"{ui.clock(time.time())}  {text}")

    def tick(self, elapsed: float | None, total: float | None) -> None:
        pass


class LiveView:
    """A terminal: a spinner / progress bar for the current state; finished steps above it."""

    def __init__(self, err):
        from rich.progress import (BarColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 BarColumn(), TextColumn("{task.fields[clock]}"),
                                 TimeElapsedColumn(), console=err, transient=True)
        self.task = self.progress.add_task("sending", total=None, clock="")
        self._last = None
        self._pending: tuple[float, str] | None = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def show(self, key: tuple, text: str) -> None:
        if key != self._last:
            self._settle()
            self._last = key
            self._pending = (time.time(), text)
        self.progress.update(self.task, description=text)

    def note(self, text: str) -> None:
        self._settle()
        self.progress.console.print(f"[dim]{ui.clock(time.time())}[/]  {text}")

    def _settle(self) -> None:
        """The step shown live is over: keep it as a line above the live one."""
        if self._pending is not None:
            at, text = self._pending
            self.progress.console.print(f"[dim]{ui.clock(at)}[/]  {text}")
            self._pending = None

    def tick(self, elapsed: float | None, total: float | None) -> None:
        if total:
            self.progress.update(self.task, total=total, completed=min(elapsed, total),
                                 clock=f"{min(elapsed, total):.1f}/{total:g} s")
        else:
            self.progress.update(self.task, total=None, clock="")


def run(env, source: str, target: str, options: dict[str, Any], *, as_json: bool,
        timeout: float | None) -> int:
    settings, redis = env.settings, env.redis
    source_node, kwargs = build_request(registry.nodes(redis), source, target, options)
    try:
        request = jobs.parse_request(kwargs, settings)
    except jobs.BadRequest as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    wait_s = timeout or default_timeout(request, settings)
    app = env.app
    queue = f"node.{source_node['name']}"
    task_id = str(uuid.uuid4())
    channel = app.backend.get_key_for_task(task_id).decode()
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)  # before sending: no state can be missed
    try:
        app.send_task("tasks.measure", kwargs=kwargs, queue=queue, task_id=task_id)
        err = ui.console(stderr=True)
        view_cls = LiveView if err.is_terminal else LineView
        with view_cls(err) as view:
            meta = _follow(app, redis, pubsub, view, task_id, queue, wait_s)
    finally:
        pubsub.close()
    return _report(meta, source_node["name"], task_id, as_json)


def _follow(app, redis, pubsub, view, task_id: str, queue: str, wait_s: float) -> dict:
    deadline = time.monotonic() + wait_s
    state, info, since, meta = "PENDING", {}, time.monotonic(), {}
    holder, holder_of = None, None
    noted: set[str] = set()
    try:
        depth = redis.llen(queue)
        while True:
            if state == LOCKING and info.get("holder") != holder_of:
                holder_of = info.get("holder")
                holder = describe_holder(redis, app, holder_of)
            finished = dict(info.get("done") or {}) if state == RUNNING else {}
            if state == "SUCCESS":  # the last direction's outcome is in the result
                result = json.loads(meta["result"])
                finished = {d: result[d] for d in DIRECTIONS if d in result}
            for direction, done in finished.items():
                if direction not in noted:
                    noted.add(direction)
                    view.note(_direction_line(direction, done))
            view.show((state, info.get("direction"), info.get("resource"), holder_of),
                      state_text(state, info, queue, depth, holder))
            if state == RUNNING:
                view.tick(time.monotonic() - since, float(info.get("length_s") or 0))
            else:
                view.tick(None, None)
            if state in READY:
                return meta
            if time.monotonic() > deadline:
                raise _TimedOut(state)
            message = pubsub.get_message(timeout=TICK_S)
            if message is not None:
                meta = app.backend.decode_result(message["data"])
                phase = (state, info.get("direction"))
                state = meta.get("status", state)
                info = meta.get("result") if isinstance(meta.get("result"), dict) else {}
                if (state, info.get("direction")) != phase:
                    since = time.monotonic()
    except KeyboardInterrupt:
        if state in NOT_STARTED:
            app.control.revoke(task_id)
            raise CliError(f"interrupted: test {task_id} revoked before it started",
                           Exit.INTERRUPTED) from None
        raise CliError(f"interrupted: test {task_id} had started on {queue[5:]} and runs to "
                       f"its end (celery -A workers result {task_id})",
                       Exit.INTERRUPTED) from None
    except _TimedOut as exc:
        if exc.state in NOT_STARTED:
            app.control.revoke(task_id)
            raise CliError(f"timed out after {wait_s:.0f} s while {exc.state.lower()}: test "
                           f"{task_id} revoked (is the agent on {queue[5:]} serving?)",
                           Exit.TIMEOUT) from None
        raise CliError(f"timed out after {wait_s:.0f} s ({exc.state.lower()}); the test "
                       f"{task_id} may still finish (celery -A workers result {task_id})",
                       Exit.TIMEOUT) from None


class _TimedOut(Exception):
    def __init__(self, state: str):
        self.state = state


def _direction_line(direction: str, done: dict[str, Any]) -> str:
    if done.get("status") == "ok":
        return f"{direction}: {ui.rate(done.get('bits_per_second'))}"
    return f"{direction}: failed ({done.get('reason')}): {done.get('error') or 'no detail'}"


def _report(meta: dict[str, Any], source: str, task_id: str, as_json: bool) -> int:
    status = meta.get("status")
    if status == "REVOKED":
        raise CliError(f"test {task_id} was revoked", Exit.FAILED)
    if status == "FAILURE":
        error = meta.get("result") or {}
        message = error.get("exc_message") if isinstance(error, dict) else error
        if isinstance(message, (list, tuple)):
            message = " ".join(str(m) for m in message)
        kind = error.get("exc_type", "error") if isinstance(error, dict) else "error"
        raise CliError(f"test {task_id} failed on {source}: {kind}: {message}", Exit.FAILED)
    text = meta["result"]
    result = json.loads(text)
    out = ui.console()
    if as_json:
        out.file.write(text + "\n")  # as `celery result` prints it, byte for byte
    else:
        out.print(result_table(result))
        out.print(result_footer(result), markup=False)
    problems = [f"{d}: {result[d].get('reason')}: {result[d].get('error') or 'no detail'}"
                for d in DIRECTIONS if d in result and result[d].get("status") != "ok"]
    if (result.get("lock") or {}).get("expired"):
        problems.append("its lock expired mid-test: the rates are unverified")
    if result["status"] != "ok" or problems:
        err = ui.console(stderr=True)
        for problem in problems:
            err.print(f"cloud-bandwidth: test {result['node']} -> {result['name']} "
                      f"{result['status']}: {problem}", markup=False)
        return Exit.FAILED
    return Exit.OK


def result_table(result: dict[str, Any]):
    from rich.table import Table, box

    node, name = result["node"], result["name"]
    title = (f"{node} -> {name} ({result['target']}): {result['tool']} {result['protocol']}, "
             f"{result['length']} s per direction, {result['parallel']} stream(s)")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("direction", no_wrap=True)
    for column, justify in ( ("rate", "right"), ("status", "left"),
                            ("retransmits", "right"), ("cpu local/remote", "right"),
                            ("jitter", "right"), ("loss", "right"), ("started", "left")):
        table.add_column(column, justify=justify)
    for direction in DIRECTIONS:
        d = result.get(direction)
        if d is None:
            continue
        flow = f"{direction} ({node} -> {name})" if direction == "download" else \
            f"{direction} ({name} -> {node})"
        ok = d.get("status") == "ok"
        cpu = "–"
        if d.get("cpu_local_percent") is not None or d.get("cpu_remote_percent") is not None:
            cpu = (f"{_num(d.get('cpu_local_percent'))}% / "
                   f"{_num(d.get('cpu_remote_percent'))}%")
        table.add_row(
            flow,
            ui.rate(d.get("bits_per_second")) if ok else "–",
            "[green]ok[/]" if ok else f"[red]{d.get('reason')}[/]",
            _num(d.get("retransmits")), cpu,
            f"{d['jitter_ms']:.3f} ms" if d.get("jitter_ms") is not None else "–",
            f"{d['lost_percent']:.2f}%" if d.get("lost_percent") is not None else "–",
            ui.clock(d.get("start")))
    return table


def result_footer(result: dict[str, Any]) -> str:
    lock = result.get("lock") or {}
    parts = [f"status {result['status']}", f"agent {result['node']}"]
    if lock:
        parts.append(f"lock wait {lock.get('wait_s', 0):.1f} s on "
                     f"{', '.join(lock.get('resources', []))} (fence {lock.get('fence')})")
        if lock.get("requeued"):
            parts.append(f"requeued {lock['requeued']} time(s)")
    parts.append(f"attempt {result.get('attempt', 1)}")
    parts.append(f"task {result.get('task_id')}")
    return "; ".join(parts)


def _num(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.1f}"
    return str(int(value))
