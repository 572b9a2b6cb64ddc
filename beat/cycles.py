"""Cycle execution in Redis: one cycle at a time, only one beat emits it, and each job is sent
the moment the jobs it waits for have finished.

`claim_interval` takes the interval (SET NX, a little less than one interval): a second beat
out of phase (a rolling update, a mistake) finds it taken and starts nothing, so the cluster
runs one cycle per interval. `begin` takes the cycle guard with SET NX: a cycle still running
when the next is due finds it taken, so nothing piles up; the skip is counted. The plan's jobs
are stored with their dependencies (a job waits for the previous job of each of its nodes),
and `begin` returns the jobs that wait for nothing. A tournament's jobs (mesh, sampled) are
stored as the circle method's formula instead (beat/cycle_jobs.lua: O(N) hash fields, not a
document, a dependency count and a successor list per job: a 1,000-node mesh is about 3,000
fields, not 1.5 M), the scripts compute a job, its successors and its predecessors from it
in O(1), and its done and sent marks are bitmaps, a bit per job. Each finished job calls
`advance` (a Lua script: count, release successors, end the cycle), whose ready jobs the finishing worker sends
at once (`send` notes them as sent): the next round starts when the previous round's tests
finish, pair by pair, not on a timer. A cycle that ends deletes its bookkeeping at once and
the rest once its report is added to the result stream (`forget`), so Redis holds the running cycle, not the
history. The guard and all cycle keys have a TTL, so jobs that never report (a node that
vanished) cannot block monitoring for longer; beat's watch ends such a cycle just before
(`end_overdue`) so it is reported, and sends jobs released but never sent (`unsent`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import redis

from beat import plan  # beat.plan's TournamentJobs, looked up at call time (import cycle)
from beat.rounds import Tournament
from workers.store import key

GUARD = key("cycle", "guard")
OVERLAPS = key("cycle", "overlaps")
INTERVAL = key("cycle", "interval")
"""Taken by the beat that starts an interval's cycle, for a little less than one interval."""
SAMPLED_RATE = key("sampled", "rate")
"""A hash: the sampled schedule's rate and guaranteed sample age as beat last planned it
(beat.scheduler.note_rate; `cloud-bandwidth status` shows it). One key, overwritten at each
sampled cycle's start."""
_JOBS = Path(__file__).with_name("cycle_jobs.lua").read_text()
_ADVANCE = _JOBS + Path(__file__).with_name("cycle_advance.lua").read_text()
_DOCS = _JOBS + """
local T = tournament()
local docs = {}
for i, id in ipairs(ARGV) do
  local found = job(T, id)
  docs[i] = found and found[1] or false
end
return docs
"""
_MARKED = _JOBS + """
local T = tournament()
local flags = {}
for i, id in ipairs(ARGV) do flags[i] = marked(T, KEYS[2], id) end
return flags
"""
_MARK_SENT = _JOBS + """
local T = tournament()
for _, id in ipairs(ARGV) do mark(T, KEYS[2], id) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('DEL', KEYS[2]) end
return #ARGV
"""
_PARTS = ("jobs", "deps", "succ", "remaining", "done", "stats", "dispatched", "meta",
          "sent")


def cycle_key(cycle_id: str, part: str) -> str:
    return key("cycle", cycle_id, part)


def claim_interval(r: redis.Redis, interval_s: float, holder: str) -> str | None:
    """Take this interval for `holder` (the beat, and its cycle): one cycle per interval
    cluster-wide, however many beats run and whatever their phase. Returns None when taken,
    else who holds it.

    The key lives a little less than an interval (5 %, at most 5 s, less), by Redis's clock:
    a beat firing one interval after it took the key finds it gone even when its own clock
    or the network is a little ahead, and a second beat firing in between finds it held. The
    guard (begin) still keeps a long cycle from overlapping the next."""
    ttl_ms = max(1, int(1000 * (interval_s - min(5.0, 0.05 * interval_s))))
    with r.pipeline() as pipe:
        pipe.set(INTERVAL, holder, nx=True, px=ttl_ms)
        pipe.get(INTERVAL)
        taken, current = pipe.execute()
    return None if taken else (current or "unknown")


_RELEASE_INTERVAL = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def release_interval(r: redis.Redis, beat_id: str) -> bool:
    """A beat that stops cleanly gives up the interval it holds (its holder text starts with
    `beat_id`), so its successor in a rolling update starts a cycle at once."""
    return bool(r.eval(_RELEASE_INTERVAL, 1, INTERVAL, f"{beat_id} "))


def begin(r: redis.Redis, cycle_id: str, jobs: "Sequence[Any] | plan.TournamentJobs", ttl_s: int,
          meta: dict[str, Any] | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """Take the guard and store the plan: `jobs` have .id, .queue, .kwargs, .after, or are a
    tournament's by formula (beat.plan.TournamentJobs: O(N) fields, however many pairs).

    Returns (None, jobs to send now) when this cycle started, or (id of the cycle that still
    holds the guard, []) when it did not; nothing is stored then."""
    with r.pipeline() as pipe:
        pipe.set(GUARD, cycle_id, nx=True, ex=ttl_s)
        pipe.get(GUARD)
        taken, holder = pipe.execute()
    if not taken:
        r.incr(OVERLAPS)
        return holder or "unknown", []

    if isinstance(jobs, plan.TournamentJobs):
        documents = _tournament_fields(jobs)
        waiting: dict[str, int] = {}
        successors: dict[str, list[str]] = {}
        ready = jobs.first()
    else:
        documents = {job.id: json.dumps({"id": job.id, "queue": job.queue,
                                         "kwargs": job.kwargs}) for job in jobs}
        successors = {}
        for job in jobs:
            for before in job.after:
                successors.setdefault(before, []).append(job.id)
        waiting = {job.id: len(job.after) for job in jobs if job.after}
        ready = [json.loads(documents[job.id]) for job in jobs if not job.after]

    with r.pipeline(transaction=False) as pipe:
        for part, mapping in (("jobs", documents), ("deps", waiting),
                              ("succ", {k: json.dumps(v) for k, v in successors.items()}),
                              ("dispatched", {job["id"]: job["queue"] for job in ready})):
            name = cycle_key(cycle_id, part)
            items = list(mapping.items())
            for start in range(0, len(items), 10_000):
                pipe.hset(name, mapping=dict(items[start:start + 10_000]))
            pipe.expire(name, ttl_s)
        pipe.set(cycle_key(cycle_id, "remaining"), len(jobs), ex=ttl_s)
        pipe.hset(cycle_key(cycle_id, "meta"), mapping={
            "started": time.time(), "planned": len(jobs), **(meta or {})})
        pipe.expire(cycle_key(cycle_id, "meta"), ttl_s)
        pipe.execute()
    return None, ready


def _tournament_fields(jobs: "plan.TournamentJobs") -> dict[str, str]:
    """A tournament's jobs hash (its layout: beat/cycle_jobs.lua)."""
    t = jobs.tournament
    fields = {"~t": f"{len(t.circle)} {int(t.fixed is not None)} {len(t.rounds)} {t.offset} "
                    f"{t.stride} {t.round_size}"}
    fields.update((f"~r{j}", f"{r} {int(flip)}") for j, (r, flip) in enumerate(t.rounds))
    nodes = list(t.circle) + ([t.fixed] if t.fixed is not None else [])
    fields.update((f"~n{pos}", name) for pos, name in enumerate(nodes))
    fields.update((f"~k{pos}", json.dumps(jobs.against[name])) for pos, name in enumerate(nodes))
    return fields


def _stored_tournament(fields: dict[str, str]) -> "plan.TournamentJobs":
    size, fixed, rounds, offset, stride, _ = map(int, fields["~t"].split())
    nodes = [fields[f"~n{pos}"] for pos in range(size + fixed)]
    return plan.TournamentJobs(
        Tournament(tuple(nodes[:size]), nodes[size] if fixed else None,
                   tuple((int(r), flip == "1") for r, flip in
                         (fields[f"~r{j}"].split() for j in range(rounds))), offset, stride),
        {name: json.loads(fields[f"~k{pos}"]) for pos, name in enumerate(nodes)})


def pairs(r: redis.Redis, cycle_id: str) -> Iterable[tuple[str, str]]:
    """(node, peer) of each of the cycle's jobs that tests a peer (the report's pairs)."""
    name = cycle_key(cycle_id, "jobs")
    if r.hexists(name, "~t"):
        stored = _stored_tournament(r.hgetall(name))
        for pairs_ in stored.tournament.build():
            for pair in pairs_:
                yield pair.client, pair.server
        return
    for _, raw in r.hscan_iter(name, count=1000):
        job = json.loads(raw)
        peer = job.get("kwargs", {}).get("peer")
        if peer and job.get("queue", "").startswith("node."):
            yield job["queue"][len("node."):], peer


def jobs(r: redis.Redis, cycle_id: str) -> list[dict[str, Any]]:
    """Every job document of the cycle (id, queue, kwargs), while its jobs hash lives."""
    fields = r.hgetall(cycle_key(cycle_id, "jobs"))
    if "~t" not in fields:
        return [json.loads(doc) for doc in fields.values()]
    stored = _stored_tournament(fields)
    return [stored.doc(j, p, pair) for j, round_ in enumerate(stored.tournament.build())
            for p, pair in enumerate(round_)]


def _marked(r: redis.Redis, cycle_id: str, part: str, ids: Sequence[str]) -> list[bool]:
    """Whether each job is marked in the cycle's `part` ("done", "sent"): a set of ids, or a
    tournament's bitmap (beat/cycle_jobs.lua)."""
    if not ids:
        return []
    flags = r.eval(_MARKED, 2, cycle_key(cycle_id, "jobs"), cycle_key(cycle_id, part), *ids)
    return [bool(flag) for flag in flags]


def mark_sent(r: redis.Redis, cycle_id: str, ids: Sequence[str]) -> None:
    """Note these jobs as sent, for the cycle's lifetime (nothing is left behind when the
    cycle is gone)."""
    r.eval(_MARK_SENT, 2, cycle_key(cycle_id, "jobs"), cycle_key(cycle_id, "sent"), *ids)


def _docs(r: redis.Redis, cycle_id: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The documents of these jobs of the cycle (those it has)."""
    if not ids:
        return []
    found = r.eval(_DOCS, 1, cycle_key(cycle_id, "jobs"), *ids)
    return [json.loads(doc) for doc in found if doc]


def advance(r: redis.Redis, cycle_id: str, job_id: str, outcome: str,
            busy: Iterable[tuple[str, float]] = ()) -> tuple[bool, list[dict[str, Any]]]:
    """Job `job_id` finished with `outcome`; `busy` gives each involved node's seconds in it.

    Returns (cycle finished, jobs to send now). A job counted before returns (False, the jobs
    it released that were never sent): sending them again is what un-wedges a cycle whose
    worker died between advancing and sending. A job of a cycle whose keys expired returns
    (False, []) and recreates nothing."""
    keys = [cycle_key(cycle_id, p) for p in
            ("jobs", "deps", "succ", "remaining")] + [GUARD] + [
        cycle_key(cycle_id, p) for p in ("done", "stats", "dispatched", "sent")]
    args: list[Any] = [job_id, cycle_id, outcome]
    for node, seconds in busy:
        args += [node, f"{seconds:.3f}"]
    reply = r.eval(_ADVANCE, len(keys), *keys, *args)
    return int(reply[0]) == 1, [json.loads(doc) for doc in reply[1:]]


_END = """
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left <= 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'outcome:failed:' .. ARGV[2], left)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('DEL', KEYS[1], unpack(KEYS, 4))
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return left
"""
_BOOKKEEPING = ("deps", "succ", "done", "dispatched", "sent")
"""What a finished cycle no longer needs: deleted when it ends (with `remaining`)."""


def end_overdue(r: redis.Redis, cycle_id: str, within_ms: int,
                reason: str = "cycle_timeout") -> int:
    """End `cycle_id` if its keys expire within `within_ms` (by Redis's clock) with jobs still
    unfinished: count those as failed with `reason`, free the guard, so the cycle can be
    reported instead of vanishing. Returns how many jobs it ended (0: not overdue)."""
    ttl = r.pttl(cycle_key(cycle_id, "jobs"))
    if ttl < 0 or ttl > within_ms:
        return 0
    keys = [cycle_key(cycle_id, "remaining"), cycle_key(cycle_id, "stats"), GUARD] + [
        cycle_key(cycle_id, part) for part in _BOOKKEEPING]
    return int(r.eval(_END, len(keys), *keys, cycle_id, reason))


def forget(r: redis.Redis, cycle_id: str) -> None:
    """The cycle's report was sent: delete what is left of it (its jobs, meta and stats; the
    rest went when it ended). A job of it arriving later finds it gone and is not run."""
    r.delete(*(cycle_key(cycle_id, part) for part in _PARTS))


def ended_unreported(r: redis.Redis, cycle_id: str) -> bool:
    """The cycle ended (its `remaining` counter is gone) but its report was never added (its
    jobs hash is still there: `forget` deletes it after the report)."""
    with r.pipeline(transaction=False) as pipe:
        pipe.exists(cycle_key(cycle_id, "jobs"))
        pipe.exists(cycle_key(cycle_id, "remaining"))
        jobs, remaining = pipe.execute()
    return bool(jobs) and not remaining


def unsent(r: redis.Redis, cycle_id: str) -> list[dict[str, Any]]:
    """Jobs released (dispatched) but never sent: their sender died, or beat failed right after
    begin. The watchdog sends those it sees unsent twice in a row."""
    released = sorted(r.hkeys(cycle_key(cycle_id, "dispatched")))  # the jobs in flight: few
    if not released:
        return []
    sent = _marked(r, cycle_id, "sent", released)
    missing = [job for job, was_sent in zip(released, sent) if not was_sent]
    return _docs(r, cycle_id, missing)


def task_id(cycle_id: str, job_id: str) -> str:
    """The Celery task id of a cycle's job: the same for every send of it, so a job sent again
    shares its ledger (attempts, handed-over result) with any earlier copy, and a copy that
    comes second finds the first one's outcome instead of measuring again."""
    return f"{cycle_id}.{job_id}"


UNACKED = "unacked"
"""kombu's Redis transport: messages fetched by a worker and not acknowledged yet."""


def lost(r: redis.Redis, cycle_id: str) -> list[dict[str, Any]]:
    """Jobs sent but whose message no worker can ever run: never started (no attempt in the
    job's ledger, `cbw:task:<task id>`), and neither in its queue nor fetched (kombu's unacked
    hash). A purged queue, or a Redis restarted from an older snapshot, leaves such jobs.
    Everything read is in Redis; the caller asks twice before acting (a fetch moves the message
    from the queue to the unacked hash in two steps)."""
    in_flight = dispatched(r, cycle_id)
    if not in_flight:
        return []
    ids = sorted(in_flight)
    was_sent = _marked(r, cycle_id, "sent", ids)
    with r.pipeline(transaction=False) as pipe:
        for job in ids:
            pipe.exists(key("task", task_id(cycle_id, job)))
        started = pipe.execute()
    candidates = [job for job, sent_, began in zip(ids, was_sent, started)
                  if sent_ and not began]
    if not candidates:
        return []
    queues = {in_flight[job] for job in candidates}
    with r.pipeline(transaction=False) as pipe:
        for queue in sorted(queues):
            pipe.lrange(queue, 0, -1)
        pipe.hvals(UNACKED)
        *queued, fetched = pipe.execute()
    waiting = "\n".join(m for messages in [*queued, fetched] for m in messages)
    missing = [job for job in candidates if f'"{task_id(cycle_id, job)}"' not in waiting]
    return _docs(r, cycle_id, missing)


def job_state(r: redis.Redis, cycle_id: str, job_id: str) -> str:
    """"gone" when the cycle's keys expired or it ended by timeout (the job outlived its
    cycle), "done" when the job was counted already (a duplicate message), else "pending".
    Redis's clock decides, through the keys' TTL: no wall clocks of two machines are
    compared."""
    with r.pipeline(transaction=False) as pipe:
        pipe.get(cycle_key(cycle_id, "remaining"))
        pipe.eval(_MARKED, 2, cycle_key(cycle_id, "jobs"), cycle_key(cycle_id, "done"), job_id)
        remaining, (done,) = pipe.execute()
    return "gone" if int(remaining or 0) <= 0 else "done" if done else "pending"


def dispatched(r: redis.Redis, cycle_id: str) -> dict[str, str]:
    """Jobs sent but not finished: id → queue."""
    return r.hgetall(cycle_key(cycle_id, "dispatched"))


def active(r: redis.Redis) -> str | None:
    """The cycle that holds the guard, if any."""
    return r.get(GUARD)


def summary(r: redis.Redis, cycle_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """(meta, stats) of a cycle, for the scheduler-health report."""
    with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(cycle_key(cycle_id, "meta"))
        pipe.hgetall(cycle_key(cycle_id, "stats"))
        meta, stats = pipe.execute()
    return meta, stats


def overlaps(r: redis.Redis) -> int:
    return int(r.get(OVERLAPS) or 0)


def send(app, cycle_id: str, jobs: Iterable[dict[str, Any]],
         r: redis.Redis | None = None) -> int:
    """Send ready jobs to their queues as tasks.measure and, given `r`, note them as sent (a
    redelivered predecessor re-sends only what was never sent). A job that outlives its cycle
    is not run: the worker finds the cycle's keys gone (job_state), so no message carries a
    wall-clock expiry that another machine's clock would judge.

    No Celery result record is kept for a cycle job (`ignore_result`: no STARTED, progress or
    SUCCESS record): nobody reads it (its result reaches carbon through the result handler),
    and one record per test for a day would make the keyspace grow with the tests run, not
    with the nodes. Ad-hoc tests keep theirs (`cloud-bandwidth test` reads it)."""
    sent = []
    for job in jobs:
        app.send_task("tasks.measure", kwargs=dict(job["kwargs"], cycle=cycle_id, job=job["id"]),
                      queue=job["queue"], task_id=task_id(cycle_id, job["id"]),
                      ignore_result=True)
        sent.append(job["id"])
    if sent and r is not None:
        mark_sent(r, cycle_id, sent)
    return len(sent)
