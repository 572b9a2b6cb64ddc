"""Every default setting in one place, each with its unit.

The first block keeps the original tool's defaults (seed/kubernetes-deployment.md) so that its
configurations mean the same thing here.
"""

POLL_INTERVAL = 300
"""Seconds between the starts of two measurement cycles (CBANDWIDTH_POLL_INTERVAL)."""

POLL_LENGTH = 5
"""Seconds each direction of a test runs (CBANDWIDTH_POLL_LENGTH)."""

DOWNLOAD_PREFIX = "bandwidth.download"
"""Graphite path prefix of the test without -R, the original's "download"."""

UPLOAD_PREFIX = "bandwidth.upload"
"""Graphite path prefix of the test with -R, the original's "upload"."""

STATUS_PREFIX = "bandwidth.status"
"""Graphite path prefix of the status series: 0 = measured, otherwise a reason code."""

DETAIL_PREFIX = "bandwidth.detail"
"""Graphite path prefix of what a tool reports beside throughput (retransmits, CPU, jitter)."""

IPERF3_PORT = 5201
"""TCP port of the iperf3 servers (CBANDWIDTH_PERF_SERVER_PORT, as in the original)."""

IPERF2_PORT = 5001
"""TCP/UDP port of the iperf2 servers (CBANDWIDTH_IPERF2_PORT)."""

NETPERF_PORT = 12865
"""Control port of netserver (CBANDWIDTH_NETPERF_PORT). The original ignored
CBANDWIDTH_PERF_SERVER_PORT for netperf and always used this port; so do we."""

GRAPHITE_PORT = 2003
"""Carbon plaintext receiver port (CBANDWIDTH_GRAPHITE_PORT / CBANDWIDTH_GRAFANA_PORT)."""

IPERF_PARALLEL = 1
"""Parallel streams per test (CBANDWIDTH_IPERF_PARALLEL)."""

REDIS_URL = "redis://127.0.0.1:6379/0"
"""Broker, result backend, locks and registry (CBANDWIDTH_REDIS_URL)."""

UDP_BANDWIDTH = 1_000_000_000
"""Offered load of a UDP test in bits per second (CBANDWIDTH_UDP_BANDWIDTH)."""

TIMEOUT_MARGIN = 10
"""Seconds a tool may run past the test length before it is killed (CBANDWIDTH_TIMEOUT_MARGIN)."""

MAX_ATTEMPTS = 3
"""Times one test may be started before it is given up as abandoned: a worker that dies mid-test
gets its message back (acks_late), and Celery would requeue it forever."""

CARBON_TIMEOUT = 5
"""Seconds for connecting to carbon and for one send (CBANDWIDTH_CARBON_TIMEOUT)."""

CARBON_RETRY_MAX = 30
"""Longest pause in seconds between two tries to deliver a batch of results while carbon is
unreachable (CBANDWIDTH_CARBON_RETRY_MAX). The pause doubles from 1 s up to this."""

RESULTS_BACKLOG_MAX = 500_000
"""Entries (results, cycle reports) the durable result stream keeps while carbon is unreachable
(CBANDWIDTH_RESULTS_BACKLOG_MAX). Past it the oldest entries are dropped and counted
(workers.results). About 720 B of Redis memory per mesh result (bench.results_drain): 360 MB at the default."""

RESULTS_BATCH = 500
"""Stream entries the result handler turns into lines and writes to carbon in one write."""

RESULTS_REPLAY_WINDOW = 5
"""Seconds a batch written to carbon stays pending (not deleted) with the result handler: only
when carbon's connection is still open this long after it was written is the batch settled.
A connection carbon closed before (it stopped or crashed, possibly with the batch unread or
unstored: the plaintext protocol has no acknowledgement) has its batches written again."""

RESULTS_CLAIM_IDLE = 60
"""Seconds an entry may sit unacknowledged with a result handler (that died mid-batch) before
another one, or its restart, takes it over (XAUTOCLAIM). A live handler retrying a batch
touches its entries well within this, so two live handlers never deliver one entry."""

VISIBILITY_TIMEOUT = 900
"""Seconds an unacknowledged message stays with the worker that fetched it before Redis hands it
to another one (CBANDWIDTH_VISIBILITY_TIMEOUT). Must exceed the longest task."""

HEARTBEAT_INTERVAL = 10
"""Seconds between a node agent's registry heartbeats; an entry lives three of them."""

RESULTS_QUEUE = "results"
"""Queue of the result handler."""

SHARED_QUEUE = "nodes"
"""Queue every node agent consumes: a task sent without --queue runs on any node."""

LOCK_WAIT = 120
"""Seconds a test waits for its resources (woken on release) before it is requeued with
jittered backoff (CBANDWIDTH_LOCK_WAIT)."""

LOCK_RETRIES = 3
"""Times a test that could not get its resources is requeued before it is recorded as skipped
(CBANDWIDTH_LOCK_RETRIES)."""

LOCK_SLACK = 10
"""Seconds added to a test's longest possible run (directions × (length + timeout margin)) to
make its lock TTL: enough to hand over the result, short enough that a killed worker's locks
free up soon."""

AGGREGATE_MAX = 64
"""Concurrent clients one collector admits in the aggregate schedule (CBANDWIDTH_AGGREGATE_MAX)."""

SAMPLE_PEERS = 3
"""Peers per node per cycle in the sampled schedule (CBANDWIDTH_SAMPLE_PEERS)."""

MESH_PREFIX = "bandwidth.mesh"
"""Graphite prefix of mesh series: <prefix>.<source>.<destination>, bits per second of the flow
from source to destination (CBANDWIDTH_MESH_PREFIX)."""

SCHEDULER_PREFIX = "bandwidth.scheduler"
"""Graphite prefix of the scheduler's health series (CBANDWIDTH_SCHEDULER_PREFIX)."""

SERVER_IDLE_TIMEOUT = 30
"""Seconds an agent-run iperf3 server may sit in a stuck state before iperf3 restarts itself
(--idle-timeout; CBANDWIDTH_SERVER_IDLE_TIMEOUT)."""

LOCK_BACKOFF_CAP = 60
"""Longest pause in seconds before a test whose resources stayed busy is requeued, before
jitter (× 0.5 to 1.5): 5 s doubling per requeue, up to this."""

LOCK_BACKOFF_MAX = 1.5 * LOCK_BACKOFF_CAP
"""Longest such pause with its jitter."""

HAND_OVER_RETRIES = 8
"""Retries of a measured test whose result could not be published or whose cycle could not be
advanced (Redis away); each retry takes the handed-over path and does not measure again."""

HAND_OVER_BACKOFF_CAP = 30
"""Longest pause in seconds between two hand-over retries (1 s doubling, up to this)."""

HAND_OVER_BACKOFF_TOTAL = sum(min(2 ** n, HAND_OVER_BACKOFF_CAP)
                              for n in range(HAND_OVER_RETRIES))
"""Seconds all hand-over retries can wait in total (121 s): part of the ledger's TTL
(workers.ledger.ttl_s)."""

REDIS_REPLICAS_TIMEOUT = 2.0
"""Seconds a lock or a hand-over waits for its replicas (CBANDWIDTH_REDIS_REPLICAS_TIMEOUT).
A healthy replica confirms within milliseconds; past this the write counts as unreplicated."""

FAILOVER_RIDE_S = 60
"""Seconds a node agent keeps trying to hand a result over while Redis cannot be reached (a
Sentinel failover: down-after-milliseconds, 30 s by default, plus an election) before it falls
back to a Celery retry, which needs the broker itself."""
