"""Celery settings, derived from the validated cloud-bandwidth configuration.

Celery imports this module lazily when the app is first configured (process start of every
`celery -A workers …` command), so a bad setting exits there with one line, not a traceback.
"""
import ssl
from urllib.parse import urlsplit

from kombu import Exchange, Queue

from workers import config, defaults

_settings = config.exit_on_error()

broker_url = _settings.redis_url
result_backend = _settings.redis_url
broker_connection_retry_on_startup = True

if urlsplit(_settings.redis_url).scheme == "rediss":
    # TLS that verifies the server, against the system's CAs (a private CA: SSL_CERT_FILE).
    # Celery refuses a rediss:// result backend without ssl_cert_reqs; redis-py (registry,
    # locks) verifies by default already.
    broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    redis_backend_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}

# Sentinel (sentinel://host:26379;sentinel://host2:26379/db): kombu and Celery's SentinelBackend
# ask the sentinels for the master named in master_name. Both read it from their transport
# options; the result backend ignores broker_transport_options, so it is set on both. The URL's
# password is the master's; the sentinels' own goes in sentinel_kwargs.
_sentinel_options = {}
if _settings.redis_sentinel_master:
    # Timeouts for the sentinel connections too: given sentinel_kwargs, redis-py uses only
    # these for them, and a sentinel that stopped answering must not hang a lookup.
    _sentinel_options = {"master_name": _settings.redis_sentinel_master,
                         "sentinel_kwargs": {"socket_timeout": 10, "socket_connect_timeout": 5,
                                             "password": _settings.redis_sentinel_password}}

# JSON only: a pickled message could run code on every node; it is refused, not deserialised.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A node agent consumes its own queue and the shared one, without -Q. Only these two are listed
# here: `-Q results` replaces the list for the result handler, and a node agent never takes a
# results message by accident.


def _own_exchange(name: str) -> Queue:
    # Each queue gets an exchange and routing key of its own name. Left to Celery, every listed
    # queue would be bound to the default exchange with the default routing key, and a message
    # for the shared queue would be copied into every node queue too.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


task_queues = (_own_exchange(_settings.node_queue), _own_exchange(defaults.SHARED_QUEUE))
task_default_queue = defaults.SHARED_QUEUE
task_routes = {name: {"queue": defaults.RESULTS_QUEUE}
               for name in ("tasks.publish", "tasks.publish_lines", "tasks.report_cycle")}
task_create_missing_queues = True

# One test at a time per node: two tests from one node would share its NIC and distort both.
worker_concurrency = 1
# acks_late: the message is acknowledged only after the test ran and its result was handed to
# the result handler, so a worker that dies mid-test leaves the message to be run again.
task_acks_late = True
# ...and a worker child killed by a signal gives its message back at once (bounded by our own
# attempt counter, workers.attempts, since Celery would requeue it forever).
task_reject_on_worker_lost = True
# Prefetch 1: an unacknowledged message waiting behind a long test would otherwise pass the
# visibility timeout and be handed to a second worker while the first still holds it.
worker_prefetch_multiplier = 1
# kombu's Redis transport gives an unacknowledged message to another worker after this long,
# counted from fetch; it is validated to exceed the longest test (both directions + margins).
broker_transport_options = {"visibility_timeout": _settings.visibility_timeout_s,
                            **_sentinel_options}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_s,
                                    **_sentinel_options}

# Results of ad-hoc tests stay readable with `celery result <id>` for a day.
result_expires = 86400
result_extended = True
task_track_started = True

# The worker's own log line per task is enough; the measurement is logged by the task.
worker_hijack_root_logger = True
worker_redirect_stdouts = False

imports = ("tasks",)
beat_scheduler = "beat.scheduler:CycleScheduler"
# Beat keeps its schedule in memory; the cycle guard in Redis is what survives restarts, and a
# read-only container filesystem has nowhere to write celerybeat-schedule.
beat_max_loop_interval = 1.0
