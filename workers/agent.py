"""What a node agent does around its tasks: announce itself in the registry while it serves,
and run (and heal) its own test servers when CBANDWIDTH_SERVE asks for them.

Only a worker that consumes its own `node.<NODE_NAME>` queue is a node agent; the result
handler (`-Q results`) announces nothing and serves nothing.
"""
from __future__ import annotations

import logging
import time

from celery import bootsteps, signals

from workers import config, hosts, locks, registry, store
from workers.defaults import LOCK_SLACK

log = logging.getLogger(__name__)


def _is_agent(consumer, settings: config.Settings) -> bool:
    try:
        return settings.node_queue in {q.name for q in consumer.task_consumer.queues}
    except AttributeError:
        return False


_heartbeat: list["RegistryHeartbeat"] = []


class RegistryHeartbeat(bootsteps.StartStopStep):
    """Writes the registry entry from the consumer's own event loop (its timer), not from a
    thread of its own: a worker whose loop hangs stops consuming *and* stops heartbeating, so
    it leaves the registry (and the next plan) within three heartbeat periods."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.timer_entry = None
        self.info: dict | None = None
        self.received = 0
        self.last_received: float | None = None
        _heartbeat[:] = [self]  # one consumer per worker process; task_received finds it here

    def start(self, c):
        settings = config.get()
        if not _is_agent(c, settings):
            return
        self.info = registry.node_info(settings, time.time())
        try:
            registry.arrived(store.client(), settings.node_name)
        except Exception as exc:  # Redis away: the marker expires by itself
            log.warning("could not clear %s's shutdown marker: %s", settings.node_name, exc)
        self._beat(settings)
        self.timer_entry = c.timer.call_repeatedly(settings.heartbeat_interval_s, self._beat,
                                                   (settings,), priority=10)
        log.info("node agent %s serving queue %s", settings.node_name, settings.node_queue)

    def note_received(self) -> None:
        self.received += 1
        self.last_received = time.time()

    def _beat(self, settings: config.Settings) -> None:
        entry = dict(self.info, received=self.received, last_received=self.last_received)
        try:
            registry.announce(store.client(), entry, 3 * settings.heartbeat_interval_s)
        except Exception as exc:  # Redis away: keep trying; the entry expires meanwhile
            log.warning("registry heartbeat failed: %s", exc)

    def stop(self, c):
        if self.timer_entry is None:
            return
        self.timer_entry.cancel()
        self.timer_entry = None
        settings = config.get()
        try:
            registry.withdraw(store.client(), settings.node_name,
                              leaving_s=config.shutdown_grace_s(settings))
        except Exception as exc:
            log.warning("could not withdraw %s from the registry: %s", settings.node_name, exc)


@signals.task_received.connect
def _count_received(**_):
    for step in _heartbeat:
        step.note_received()


# --- the node's own test servers ------------------------------------------------------------

_supervisor = None


def _own_locks(settings: config.Settings) -> tuple[str, ...]:
    """The locks a test involving this node's servers holds: the node's own, and its iperf3
    server's (an ad-hoc test by address of a node that already left the registry holds only
    that one). Locks name addresses (tasks._identity)."""
    given = settings.node_address or settings.node_name
    address = (hosts.addresses(given) or [given])[0]
    return f"node:{settings.node_name}", f"srv:iperf3:{address}:{settings.iperf3_port}"


def _own_server_locked(settings: config.Settings) -> bool:
    """Is a test allowed to be using our iperf3 server right now (does anyone hold it)?"""
    r = store.client()
    return any(locks.holder(r, name) for name in _own_locks(settings))


@signals.worker_ready.connect
def _start_servers(sender=None, **_):
    global _supervisor
    settings = config.get()
    if not settings.serve or not _is_agent(sender, settings):
        return
    from workers.servers import ServerStartError, Supervisor

    supervisor = Supervisor(
        settings.serve, settings.node_address,
        {"iperf3": settings.iperf3_port, "iperf2": settings.iperf2_port,
         "netperf": settings.netperf_port},
        idle_timeout_s=settings.server_idle_timeout_s,
        lock_held=lambda: _own_server_locked(settings),
        check_interval_s=settings.heartbeat_interval_s)
    try:
        _supervisor = supervisor.start()
    except ServerStartError as exc:
        # Still useful as a client; other nodes' tests against it fail as unreachable.
        log.error("could not start this node's test servers: %s", exc)
        return
    log.info("serving %s on %s", ", ".join(settings.serve), settings.node_address or "*")


@signals.worker_shutdown.connect
def _stop_servers(**_):
    """Stop this node's test servers when no test involves the node any more.

    SIGTERM (a rolling restart) starts Celery's warm shutdown: the consumer stops (the node
    leaves the registry, so no new plan includes it), the running test finishes and is
    handed over (a test still waiting for its locks is handed back: tasks._measure_
    exclusively), and then this runs. A test another node started against our servers in
    the meantime still holds our node's or our iperf3 server's lock: we take both, waiting
    for it within config.shutdown_grace_s, so the servers go only after it ended and no new
    test starts against them. Tests that wait for the locks meanwhile find the servers gone
    (unreachable: a failed direction with its reason, never a rate)."""
    if _supervisor is None:
        return
    settings = config.get()
    lease = None
    try:
        wait_s = 2 * (settings.poll_length_s + settings.timeout_margin_s) + LOCK_SLACK
        lease = locks.acquire(store.client(), locks.Resources(_own_locks(settings)),
                              ttl_ms=60_000, wait_s=wait_s,
                              owner=f"shutdown:{settings.node_name}")
        if lease is None:
            log.warning("a test still involves this node after %s s; stopping its test "
                        "servers anyway", wait_s)
        else:
            log.info("no test involves this node any more after %.1f s; stopping this "
                     "node's test servers", lease.waited_s)
    except Exception as exc:  # Redis away: nothing can be checked; stop anyway
        log.warning("could not check for tests of this node (%s); stopping this node's test "
                    "servers", exc)
    _supervisor.stop()
    if lease is not None:
        try:
            locks.release(store.client(), lease)
        except Exception as exc:
            log.warning("could not release %s (it expires by its TTL): %s", lease.owner, exc)


@signals.worker_init.connect
def _check_identity(sender=None, **_):
    """A node agent whose name others cannot test at stops here, with one line."""
    settings = config.get()
    queues = sender.app.amqp.queues
    if settings.node_queue in set(queues.consume_from or queues):
        config.exit_on_error(lambda: config.check_node_identity(settings))


def install(app) -> None:
    app.steps["consumer"].add(RegistryHeartbeat)
