"""The lab's private Redis: password enforced, reachable from the hosts over the bridge."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lab import Lab
from lab.services import RedisReplyError

pytestmark = pytest.mark.lab

PASSWORD = "s3cret pass/with:odd@chars"
# redis-py counts AuthenticationError as a ConnectionError and retries it with backoff (~4 s).
NO_RETRY = Retry(NoBackoff(), 0)


def test_ping_with_password_and_wrong_password_rejected(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=0, redis=True, redis_password=PASSWORD)
    assert lab.redis is not None
    assert lab.redis.bind == "127.0.0.1"
    assert lab.redis.port != 6379  # never the system Redis

    client = redis.Redis.from_url(lab.redis.url)
    try:
        assert client.ping() is True
    finally:
        client.close()

    wrong = redis.Redis(host=lab.redis.bind, port=lab.redis.port, password="wrong", socket_timeout=2, retry=NO_RETRY)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            wrong.ping()
    finally:
        wrong.close()

    anonymous = redis.Redis(host=lab.redis.bind, port=lab.redis.port, socket_timeout=2, retry=NO_RETRY)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()

    with pytest.raises(RedisReplyError, match="WRONGPASS"):
        lab.redis.command("PING", password="wrong")


def test_hosts_reach_redis_on_the_bridge(make_lab: Callable[..., Lab]) -> None:
    """A venv Python started inside a host (as the Celery workers will be) has the host's
    hostname and reaches Redis at the bridge address with the lab's URL."""
    lab = make_lab(hosts=1, redis=True, redis_password=PASSWORD)
    assert lab.redis is not None and lab.bridge is not None
    assert lab.redis.bind == lab.bridge.address
    code = (
        "import os, socket, redis; "
        "r = redis.Redis.from_url(os.environ['CBANDWIDTH_REDIS_URL']); "
        "print(socket.gethostname(), r.ping(), flush=True)"
    )
    process = lab.spawn("h1", "probe", [sys.executable, "-c", code], env={"CBANDWIDTH_REDIS_URL": lab.redis.url})
    assert process.wait(20) == 0, process.read_log()
    assert process.read_log().strip() == "h1 True"
