"""A node agent that runs its own iperf3 server restarts it when it is stuck busy with no test
holding its lock (a dead client left it "running a test"; esnet/iperf #1735)."""
from __future__ import annotations

import json
import sys

from lab import stack
from tests.conftest import wait_until

# Connects to an iperf3 server, sends the 37-byte cookie and then holds the connection: the
# server now considers itself busy with this client and refuses everyone else.
STUCK_CLIENT = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], 5201), timeout=5)
sock.sendall(b"stuckstuckstuckstuckstuckstuckstuck\\0"[:36].ljust(36, b"x") + b"\\0")
print("holding", flush=True)
time.sleep(120)
"""


def test_agent_restarts_its_stuck_iperf3_server_and_tests_pass_again(make_lab):
    lab = make_lab(hosts=["server", "client", "dead"], redis=True, carbon=True)
    env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH="1", CBANDWIDTH_HEARTBEAT_INTERVAL="1",
                         CBANDWIDTH_SERVE="iperf3", CBANDWIDTH_LOCK_WAIT="5",
                         CBANDWIDTH_LOCK_RETRIES="0")
    server = stack.start_agent(lab, "server", env)
    stack.start_agent(lab, "client", env)
    stack.start_result_handler(lab, env)
    app = stack.client(lab)
    address = lab.host("server").address
    wait_until(lambda: lab.host("server").listening(5201), 15, what="the agent's iperf3 server")

    stuck = lab.spawn("dead", "stuck-client", [sys.executable, "-c", STUCK_CLIENT, address])
    wait_until(lambda: "holding" in stuck.read_log(), 10, what="the stuck client")
    wait_until(lambda: "busy with no test holding its lock" in server.read_log(), 20,
               what="the agent to notice and restart its server")
    wait_until(lambda: lab.host("server").listening(5201), 15, what="the restarted server")

    result = json.loads(app.send_task("tasks.measure", queue="node.client", kwargs={
        "target": address, "name": "healed", "directions": "both"}).get(timeout=60))
    assert result["status"] == "ok", result
    assert stuck.alive, "the stuck client still holds its old connection; the server moved on"
