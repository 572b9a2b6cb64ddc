"""store.sentinel_master: what redis-py is given for a sentinel:// URL (no connection is made
here; the failover itself is tested on real processes in tests/integration/test_redis_sentinel)."""
import pytest

from workers import config, store


def test_every_sentinel_of_the_url_is_asked_and_the_first_part_gives_the_masters_auth_and_db():
    client = store.sentinel_master("sentinel://cbw-agent:m%40ster@h1:26379/3;sentinel://h2:26380/3",
                                   "cbw", "s3nt")
    pool = client.connection_pool
    assert pool.service_name == "cbw"
    sentinels = pool.sentinel_manager.sentinels
    kwargs = [s.connection_pool.connection_kwargs for s in sentinels]
    assert [(k["host"], k["port"]) for k in kwargs] == [("h1", 26379), ("h2", 26380)]
    assert all(s.connection_pool.connection_kwargs["password"] == "s3nt" for s in sentinels)
    master = pool.connection_kwargs
    assert (master["username"], master["password"], master["db"]) == ("cbw-agent", "m@ster", 3)
    assert master["decode_responses"] is True


def test_without_a_master_name_it_names_the_variable():
    with pytest.raises(config.ConfigError, match="^CBANDWIDTH_REDIS_SENTINEL_MASTER: "):
        store.sentinel_master("sentinel://h1:26379", None)
