"""`python -m workers.healthcheck agent|results` against a real redis-server and a real result
handler worker: what the containers' health checks run (compose.yaml, the image)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_lab, wait_until
from workers import registry, store

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def redis_lab():
    lab = start_lab(hosts=0, redis=True)
    try:
        yield lab
    finally:
        lab.close()


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CBANDWIDTH_") and k != "NODE_NAME"}
    return {**clean, "CBANDWIDTH_REDIS_URL": redis_url, "CBANDWIDTH_HEARTBEAT_INTERVAL": "2",
            **extra}


def healthcheck(role: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "workers.healthcheck", role], env=env,
                          capture_output=True, text=True, timeout=60, cwd=cwd)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_agent_is_healthy_only_while_its_registry_heartbeat_is_fresh(redis_lab, tmp_path):
    env = _env(redis_lab.redis.url, NODE_NAME="hc-agent")
    r = store.client(redis_lab.redis.url)
    r.delete(store.key("node", "hc-agent"))

    status, line = healthcheck("agent", env, tmp_path)
    assert status == 1 and line == "unhealthy: node hc-agent is not in the registry"

    registry.announce(r, {"name": "hc-agent", "address": "198.19.16.2"}, ttl_s=60)
    assert healthcheck("agent", env, tmp_path) == (0, "healthy: agent")

    # A heartbeat older than two intervals (4 s here): the agent's loop stopped beating.
    entry = {"name": "hc-agent", "address": "198.19.16.2", "heartbeat": time.time() - 5}
    r.set(store.key("node", "hc-agent"), json.dumps(entry), ex=60)
    status, line = healthcheck("agent", env, tmp_path)
    assert status == 1 and "registry heartbeat is 5 s old (limit 4 s)" in line


def test_result_handler_worker_keeps_its_liveness_file_fresh(redis_lab, tmp_path):
    alive = tmp_path / "alive"
    env = _env(redis_lab.redis.url, CBANDWIDTH_HEALTH_FILE=str(alive), NODE_NAME="hc-results")
    status, line = healthcheck("results", env, tmp_path)
    assert status == 1 and "does not exist" in line

    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "workers", "worker", "-Q", "results", "--without-mingle",
         "--without-gossip", "--loglevel=WARNING"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(alive.exists, 30, "the result handler's liveness file")
        first = alive.stat().st_mtime
        assert healthcheck("results", env, tmp_path) == (0, "healthy: results")
        # Touched again from the worker's loop every heartbeat interval (2 s).
        wait_until(lambda: alive.stat().st_mtime > first, 10, "a second touch")
    finally:
        worker.terminate()
        worker.wait(30)

    os.utime(alive, (time.time() - 10, time.time() - 10))
    status, line = healthcheck("results", env, tmp_path)
    assert status == 1 and "old (limit 4 s)" in line


def test_unreachable_redis_is_unhealthy_with_the_reason(tmp_path):
    alive = tmp_path / "alive"
    alive.touch()
    env = _env("redis://127.0.0.1:1/0", CBANDWIDTH_HEALTH_FILE=str(alive))
    status, line = healthcheck("beat", env, tmp_path)
    assert status == 1 and line.startswith("unhealthy: redis at redis://127.0.0.1:1/0:")
