"""The result handler's side: one carbon connection per process, reused across results."""
from __future__ import annotations

from workers import config
from workers.carbon import CarbonClient, CarbonUnavailable

_client: CarbonClient | None = None


def carbon_client(settings: config.Settings) -> CarbonClient:
    """The process's persistent carbon connection. Raises CarbonUnavailable when no carbon
    address is configured, so the result stays queued instead of vanishing."""
    global _client
    if not settings.graphite_address:
        raise CarbonUnavailable("no carbon address: set CBANDWIDTH_GRAPHITE_ADDRESS "
                                "(or CBANDWIDTH_GRAFANA_ADDRESS)")
    if _client is None:
        _client = CarbonClient(settings.graphite_address, settings.graphite_port,
                               settings.carbon_timeout_s)
    return _client
