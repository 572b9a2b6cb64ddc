"""The durable result path: every result enters a Redis stream the moment it exists, and one
drainer in the result handler writes it to carbon in batches.

Writers (`hand_over`, `hand_over_lines`, `report_cycle`):

- a node agent hands each measured result over (tasks.measure), keyed by its task id: one Lua
  call adds the stream entry and marks the test's ledger hash (`cbw:task:<id>`, field
  `published` = the entry id) unless it was marked before, so a redelivered measure adds no
  second copy;
- whoever ends a cycle (the agent whose job finished it, beat's watch on timeout or skip)
  computes its report at that moment and adds it as prepared lines, keyed `report:<cycle>`
  (the sorted set `cbw:results:once` remembers its key for a day); beat's overlap line likewise.

The stream is `cbw:results:stream`, read by the consumer group `handlers`. Each entry has
`kind` (`result`: body is the result; `lines`: body is a list of carbon lines under the
scheduler prefix), `key` and `body` (JSON). An entry is deleted once its lines were written to
carbon, so the stream's length is the backlog. Counters beside it (never expire):
`cbw:results:handed` (entries added), `…:delivered` (entries acknowledged after their batch
reached carbon), `…:dropped` (trimmed at the cap), `…:poisoned` (could not be turned into lines;
kept in `…:unpublishable`). handed = delivered + dropped + poisoned + backlog.

The cap (CBANDWIDTH_RESULTS_BACKLOG_MAX entries): an entry added to a full stream trims the
oldest entry, delivered or not (XADD MAXLEN), and the trimmed ones are counted in `…:dropped`
and its series, and logged by the drainer. The newest results are kept because they are what
monitoring needs, and Redis, which also holds the locks and queues of the whole cluster, must
not run out of memory over a carbon outage. A mesh result costs about 720 B in the stream.

The drainer (`Drainer`, started by the `ResultDrain` bootstep in a worker that consumes the
`results` queue) reads one batch at a time, writes its lines to carbon in one write, and only
then acknowledges and deletes the entries. While carbon is down it retries the same batch with
backoff doubling up to CBANDWIDTH_CARBON_RETRY_MAX, touching its entries so that no other handler
takes them over. A handler that died mid-batch leaves its entries pending: after
RESULTS_CLAIM_IDLE seconds another handler (or its restart) takes them over (XAUTOCLAIM) and
sends them. Lines it sent before dying are sent again: the same path, timestamp and value, which
carbon stores once (the last write of a path and timestamp wins), so a re-send changes nothing.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any, Iterable

import redis

from workers import config, health, ledger, metrics
from workers.carbon import CarbonUnavailable
from workers.defaults import (RESULTS_BATCH, RESULTS_CLAIM_IDLE, RESULTS_QUEUE,
                              RESULTS_REPLAY_WINDOW)
from workers.store import key

log = logging.getLogger(__name__)

STREAM = key("results", "stream")
GROUP = "handlers"
HANDED = key("results", "handed")
DELIVERED = key("results", "delivered")
DROPPED = key("results", "dropped")
POISONED = key("results", "poisoned")
UNPUBLISHABLE = key("results", "unpublishable")
"""Results the result handler could not turn into lines (a bug, or a newer agent's format):
kept here, newest first, for an operator; at most UNPUBLISHABLE_MAX of them."""
UNPUBLISHABLE_MAX = 1000
ONCE = key("results", "once")
"""Sorted set: the keys of the scheduler lines handed over (cycle reports), scored by when; one
key however many cycles ran, members older than ONCE_TTL pruned as new ones come."""
ONCE_TTL = 86400
"""Seconds a report's or a beat line's key is remembered (its sender retries within minutes)."""

_XADD_COUNTED = """
local before = redis.call('XLEN', KEYS[1])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*',
                      'kind', ARGV[3], 'key', ARGV[4], 'body', ARGV[5])
local dropped = before + 1 - redis.call('XLEN', KEYS[1])
if dropped > 0 then redis.call('INCRBY', KEYS[4], dropped) end
redis.call('INCR', KEYS[3])
"""
"""Lua shared by both adds: append to the stream (capped), count what the cap dropped and what
was handed over; leaves the entry id in `id`."""

_ADD = """
if redis.call('HEXISTS', KEYS[2], 'published') == 1 then
  -- Done before: still a write (INCRBY 0 is replicated), so that a WAIT after this call on its
  -- connection also covers the earlier add found here (store.replicated).
  redis.call('INCRBY', KEYS[3], 0)
  return false
end
""" + _XADD_COUNTED + """
redis.call('HSET', KEYS[2], 'published', id)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return id
"""

_ADD_LINES = """
local now = tonumber(redis.call('TIME')[1])
if ARGV[4] ~= '' then
  if redis.call('ZSCORE', KEYS[2], ARGV[4]) then return false end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
  redis.call('ZADD', KEYS[2], now, ARGV[4])
end
""" + _XADD_COUNTED + """
return id
"""

_ACK = """
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
if n > 0 then redis.call('INCRBY', KEYS[2], n) end
return n
"""


def hand_over(r: redis.Redis, task_id: str, result: dict[str, Any],
              settings: config.Settings | None = None) -> str | None:
    """Add a measured result to the stream, once per task id (its ledger hash remembers it).
    Returns the entry id, or None when it was handed over before."""
    return hand_over_command(r, task_id, result, settings)


def hand_over_command(r: Any, task_id: str, result: dict[str, Any],
                      settings: config.Settings | None = None) -> Any:
    """hand_over on `r`, a client or a pipeline (to follow it with WAIT: store.replicated).
    Once per task id; run again, it is still a write, so WAIT covers the first add."""
    settings = settings or config.get()
    return r.eval(_ADD, 4, STREAM, ledger.key_of(task_id), HANDED, DROPPED,
                  settings.results_backlog_max, ledger.ttl_s(settings), "result", task_id,
                  json.dumps(result))


def hand_over_lines(r: redis.Redis, entry_key: str | None, lines: Iterable[str],
                    settings: config.Settings | None = None) -> str | None:
    """Add prepared scheduler lines (a cycle report, beat's overlap line), once per key (None:
    lines that are never sent twice, such as beat's rate at a cycle's start).
    Lines that are not well-formed or not under CBANDWIDTH_SCHEDULER_PREFIX are refused with an
    error line. Returns the entry id, or None (handed over before, or nothing acceptable)."""
    settings = settings or config.get()
    accepted = scheduler_lines(lines, settings)
    if not accepted:
        return None
    return r.eval(_ADD_LINES, 4, STREAM, ONCE, HANDED, DROPPED, settings.results_backlog_max,
                  ONCE_TTL, "lines", entry_key or "", json.dumps(accepted))


def scheduler_lines(lines: Any, settings: config.Settings) -> list[str]:
    """The well-formed lines under the scheduler prefix; the others logged and left out."""
    prefix = settings.scheduler_prefix + "."
    accepted = []
    for entry in lines if isinstance(lines, list) else [lines]:
        try:
            checked = metrics.checked_line(entry if isinstance(entry, str) else repr(entry))
        except ValueError as exc:
            log.error("health line refused: %s", exc)
            continue
        if not checked.startswith(prefix):
            log.error("health line refused: %r is not under %s", checked, prefix[:-1])
            continue
        accepted.append(checked)
    return accepted


def report_cycle(r: redis.Redis, cycle_id: str, settings: config.Settings | None = None,
                 now: float | None = None) -> list[str]:
    """A cycle ended: compute its report now, with this moment's timestamp, add it to the
    stream (once per cycle), then delete the cycle's last keys. Returns its lines."""
    from beat import cycles

    settings = settings or config.get()
    lines = health.cycle_lines(r, cycle_id, settings, now)
    if lines:
        hand_over_lines(r, f"report:{cycle_id}", lines, settings)
    cycles.forget(r, cycle_id)
    return lines


def backlog(r: redis.Redis) -> int:
    return int(r.xlen(STREAM))


def counters(r: redis.Redis) -> dict[str, int]:
    """handed / delivered / dropped / poisoned / backlog, for checks and the status series."""
    with r.pipeline(transaction=False) as pipe:
        for name in (HANDED, DELIVERED, DROPPED, POISONED):
            pipe.get(name)
        pipe.xlen(STREAM)
        *values, length = pipe.execute()
    return dict(zip(("handed", "delivered", "dropped", "poisoned"),
                    (int(v or 0) for v in values)), backlog=int(length))


# --- the drainer -----------------------------------------------------------------------------


class Drainer:
    """Delivers the stream to carbon, one batch at a time. `run` until `stop` is set."""

    def __init__(self, r: redis.Redis, carbon: Any, settings: config.Settings, consumer: str,
                 batch: int = RESULTS_BATCH, claim_idle_s: float | None = None,
                 stop: threading.Event | None = None,
                 replay_window_s: float = RESULTS_REPLAY_WINDOW):
        self.r, self.carbon, self.settings, self.consumer = r, carbon, settings, consumer
        self.batch = batch
        self.replay_window_s = replay_window_s
        # Batches written but not yet settled: (monotonic time written, connection number, ids).
        self.unsettled: list[tuple[float, int, list[str]]] = []
        # Longer than one retry pause plus one carbon timeout: a live handler touches its
        # batch after each pause, so its entries never look abandoned.
        self.claim_idle_ms = int(1000 * (claim_idle_s if claim_idle_s is not None else max(
            RESULTS_CLAIM_IDLE, 2 * (settings.carbon_retry_max_s + settings.carbon_timeout_s))))
        self.stop = stop or threading.Event()
        self._own_pending = True   # a restart under the same name reads its own entries first
        self._own_cursor = "-"
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self._next_status = 0.0
        self._dropped_seen: int | None = None

    # -- one pass

    def run(self) -> None:
        log.info("result drainer %s reading %s", self.consumer, STREAM)
        pause = 1.0
        while not self.stop.is_set():
            try:
                self.step()
                pause = 1.0
            except redis.RedisError as exc:
                log.error("result drainer: Redis error (%s); again in %.0f s", exc, pause)
                self.stop.wait(pause)
                pause = min(2 * pause, self.settings.carbon_retry_max_s)
            except Exception:  # a bug must not end delivery for good
                log.exception("result drainer: unexpected error; again in %.0f s", pause)
                self.stop.wait(pause)
                pause = min(2 * pause, self.settings.carbon_retry_max_s)
        log.info("result drainer %s stopped", self.consumer)

    def step(self, block_ms: int = 1000) -> int:
        """Read one batch, write it to carbon (retrying while carbon is down), settle what was
        written long enough ago. Returns the number of entries settled (delivered)."""
        settled = self._settle()
        entries = self._next_batch(block_ms if not self.unsettled else min(block_ms, 100))
        status = self._status_lines()
        if not entries:
            if status:
                self._send_once(status)
            return settled + self._settle()
        ids, lines, poisoned = self._prepare(entries)
        if poisoned:
            self.r.eval(_ACK, 2, STREAM, POISONED, GROUP, *poisoned)
        if ids and not self._deliver(status + lines, ids):
            return settled  # stopping: the entries stay pending, taken over after a restart
        return settled + self._settle()

    def _settle(self) -> int:
        """Acknowledge and delete the batches written at least replay_window_s ago into the
        connection that is still open: carbon kept it open that long after reading them, so it
        had them. Batches written into a connection carbon has since closed (it stopped or
        crashed, maybe before it stored them) are written again first: the same lines, which
        carbon stores once."""
        if not self.unsettled:
            return 0
        cutoff = time.monotonic() - self.replay_window_s
        due = [batch for batch in self.unsettled if batch[0] <= cutoff]
        if not due:
            return 0
        if not self.carbon.alive() or any(conn != self.carbon.connections
                                          for _, conn, _ in due):
            self._deliver([], [])   # replays them into a fresh connection
            return 0
        ids = [entry_id for _, _, batch_ids in due for entry_id in batch_ids]
        self.unsettled = [batch for batch in self.unsettled if batch[0] > cutoff]
        done = 0
        for start in range(0, len(ids), 5000):
            done += int(self.r.eval(_ACK, 2, STREAM, DELIVERED, GROUP,
                                    *ids[start:start + 5000]))
        return done

    def _next_batch(self, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        self._ensure_group()
        if self._own_pending:  # once through, from the start: each is then unsettled
            pending = self.r.xpending_range(STREAM, GROUP, self._own_cursor, "+", self.batch,
                                            consumername=self.consumer)
            if pending:
                ids = [p["message_id"] for p in pending]
                self._own_cursor = "(" + ids[-1]
                # XCLAIM to ourselves returns the entries; trimmed ones leave the PEL.
                return [(i, f) for i, f in self.r.xclaim(STREAM, GROUP, self.consumer, 0, ids)
                        if f]
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            claimed = self._claim()
            if claimed:
                return claimed
        return self._read(">", block_ms)  # new entries only: never a trimmed one

    def _read(self, start: str, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        reply = self.r.xreadgroup(GROUP, self.consumer, {STREAM: start}, count=self.batch,
                                  block=block_ms)
        return reply[0][1] if reply else []

    def _claim(self) -> list[tuple[str, dict[str, str]]]:
        """Entries a dead handler left pending longer than claim_idle: ours now."""
        reply = self.r.xautoclaim(STREAM, GROUP, self.consumer, self.claim_idle_ms,
                                  self._claim_cursor, count=self.batch)
        cursor, claimed = reply[0], reply[1]
        self._claim_cursor = cursor
        if cursor == "0-0":  # a full pass over the pending entries: rest a while
            self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
            self._forget_idle_consumers()
        entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if entries:
            log.warning("result drainer %s took over %d entries a stopped handler left",
                        self.consumer, len(entries))
        return entries

    def _forget_idle_consumers(self) -> None:
        """Consumers (handlers that ran once) with nothing pending, idle for a day: removed."""
        for info in self.r.xinfo_consumers(STREAM, GROUP):
            if info["pending"] == 0 and info["idle"] > 86_400_000 and \
                    info["name"] != self.consumer:
                self.r.xgroup_delconsumer(STREAM, GROUP, info["name"])

    def _ensure_group(self) -> None:
        # From the stream's first entry: results added before any handler ever ran are kept.
        # Recreated when the stream vanished (a Redis without persistence restarted).
        if getattr(self, "_group_ok", False) and self.r.exists(STREAM):
            return
        try:
            self.r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ok = True

    def _prepare(self, entries) -> tuple[list[str], list[str], list[str]]:
        """(ids to deliver, their lines, ids of poison entries kept aside)."""
        ids, lines, poisoned = [], [], []
        for entry_id, fields in entries:
            try:
                made = self._lines_of(fields)
            except Exception as exc:
                keep_unpublishable(self.r, fields.get("body"), exc)
                poisoned.append(entry_id)
                continue
            ids.append(entry_id)
            lines += made
        return ids, lines, poisoned

    def _lines_of(self, fields: dict[str, str]) -> list[str]:
        body = json.loads(fields["body"])
        if fields.get("kind") == "lines":
            # Refused lines were logged when they were added; a forged entry is filtered here.
            return scheduler_lines(body, self.settings)
        if not isinstance(body, dict):
            raise ValueError(f"a result is a JSON object, got {type(body).__name__}")
        return metrics.lines_for(body, self.settings)

    def _deliver(self, lines: list[str], ids: list[str]) -> bool:
        """Write `lines` (the batch `ids`) to carbon in one write, after the unsettled batches
        written into an earlier connection, retrying with backoff while carbon is down. False
        when asked to stop before it succeeded."""
        pause = 1.0
        while True:
            try:
                conn = self.carbon.connect()
                replay = [b for b in self.unsettled if b[1] != conn]
                replayed = self._lines_again([i for _, _, batch in replay for i in batch])
                self.carbon.send(metrics.encode(replayed + lines))
                break
            except CarbonUnavailable as exc:
                waiting = len(ids) + sum(len(batch) for _, _, batch in self.unsettled)
                log.warning("carbon unavailable (%s); %d entries kept, backlog %d, "
                            "retrying in %.0f s", exc, waiting, backlog(self.r), pause)
            if self.stop.wait(pause):
                return False
            pause = min(2 * pause, self.settings.carbon_retry_max_s)
            self._touch(ids + [i for _, _, batch in self.unsettled for i in batch])
        if log.isEnabledFor(logging.INFO):  # one line per datapoint, as the handler always
            for entry in lines:               # logged them (the lab's demo streams them)
                log.info("sent %s", entry)
        now = time.monotonic()
        if replay:
            log.warning("carbon reconnected: %d entries written before were written again",
                        len(replayed))
            self.unsettled = [b for b in self.unsettled if b[1] == conn] + [
                (now, conn, batch) for _, _, batch in replay]
        if ids:
            self.unsettled.append((now, conn, ids))
        return True

    def _lines_again(self, ids: list[str]) -> list[str]:
        """The lines of entries written before (still pending with us: read back by id)."""
        lines: list[str] = []
        for start in range(0, len(ids), self.batch):
            chunk = ids[start:start + self.batch]
            for entry_id, fields in self.r.xclaim(STREAM, GROUP, self.consumer, 0, chunk):
                if fields:
                    try:
                        lines += self._lines_of(fields)
                    except Exception:  # kept aside the first time; not again
                        continue
        return lines

    def _touch(self, ids: list[str]) -> None:
        """Reset the idle time of those of `ids` still ours: another handler's XAUTOCLAIM
        leaves them alone while we retry."""
        if not ids:
            return
        pending = self.r.xpending_range(STREAM, GROUP, min(ids, key=_order),
                                        max(ids, key=_order), len(ids) + 1,
                                        consumername=self.consumer)
        wanted = set(ids)
        mine = [p["message_id"] for p in pending if p["message_id"] in wanted]
        if mine:
            self.r.xclaim(STREAM, GROUP, self.consumer, 0, mine, justid=True)

    def _send_once(self, lines: list[str]) -> None:
        try:
            self.carbon.send(metrics.encode(lines))
        except CarbonUnavailable as exc:
            log.info("result handler status not sent, carbon unavailable: %s", exc)

    def _status_lines(self) -> list[str]:
        """Every heartbeat interval: backlog, dropped and delivered, now."""
        if time.monotonic() < self._next_status:
            return []
        self._next_status = time.monotonic() + self.settings.heartbeat_interval_s
        now = time.time()
        counts = counters(self.r)
        if self._dropped_seen is not None and counts["dropped"] > self._dropped_seen:
            log.error("result backlog reached CBANDWIDTH_RESULTS_BACKLOG_MAX=%d: %d oldest "
                      "entries dropped", self.settings.results_backlog_max,
                      counts["dropped"] - self._dropped_seen)
        self._dropped_seen = counts["dropped"]
        base = f"{self.settings.scheduler_prefix}.results"
        return [metrics.line(f"{base}.{name}", counts[name], now)
                for name in ("backlog", "dropped", "delivered")]


def _order(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def keep_unpublishable(r: redis.Redis, result: Any, exc: Exception) -> None:
    text = result if isinstance(result, str) else json.dumps(result, default=repr)
    log.error("result cannot be written as carbon lines (%s); kept in %s: %s", exc,
              UNPUBLISHABLE, text)
    try:
        with r.pipeline() as pipe:
            pipe.lpush(UNPUBLISHABLE, text)
            pipe.ltrim(UNPUBLISHABLE, 0, UNPUBLISHABLE_MAX - 1)
            pipe.execute()
    except Exception as again:  # the log line above still has it
        log.error("could not keep result in %s: %s", UNPUBLISHABLE, again)


# --- in the result handler -------------------------------------------------------------------

from celery import bootsteps  # noqa: E402


class ResultDrain(bootsteps.StartStopStep):
    """Runs the drainer in a thread of a worker that consumes the `results` queue (the result
    handler, `celery -A workers worker -Q results`); a node agent runs none."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.thread: threading.Thread | None = None
        self.drainer: Drainer | None = None

    def start(self, c):
        try:
            queues = {q.name for q in c.task_consumer.queues}
        except AttributeError:
            return
        if RESULTS_QUEUE not in queues or (self.thread and self.thread.is_alive()):
            return
        from workers import store

        settings = config.get()
        name = f"{getattr(c, 'hostname', None) or socket.gethostname()}:{os.getpid()}"
        self.drainer = Drainer(store.client(), _LazyCarbon(settings), settings, name)
        self.thread = threading.Thread(target=self.drainer.run, name="result-drainer",
                                       daemon=True)
        self.thread.start()

    def stop(self, c):
        if self.thread is None:
            return
        self.drainer.stop.set()
        self.thread.join(timeout=self.drainer.settings.carbon_timeout_s + 2)
        self.thread = None


class _LazyCarbon:
    """The process's carbon client, created at first use (a missing carbon address is then a
    CarbonUnavailable: the backlog is kept, not lost)."""

    def __init__(self, settings: config.Settings):
        self.settings = settings

    @property
    def _client(self):
        from workers.publisher import carbon_client

        return carbon_client(self.settings)

    @property
    def connections(self) -> int:
        try:
            return self._client.connections
        except CarbonUnavailable:
            return 0

    def connect(self) -> int:
        return self._client.connect()

    def alive(self) -> bool:
        try:
            return self._client.alive()
        except CarbonUnavailable:
            return False

    def send(self, payload: bytes) -> None:
        self._client.send(payload)


def install(app) -> None:
    app.steps["consumer"].add(ResultDrain)
