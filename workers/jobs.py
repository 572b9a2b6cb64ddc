"""What `tasks.measure` does, as plain functions: validate a request, run its directions, and
shape the JSON result. No Celery here; the task wires these to the broker.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from workers import config
from workers.hosts import validate_target
from workers.measurement import DIRECTIONS, PROTOCOLS, TOOLS, DirectionResult, Reason, TestSpec

log = logging.getLogger(__name__)

OPTIONS = ("target", "name", "tool", "port", "length", "parallel", "protocol", "directions",
           "udp_bandwidth", "bind_address", "peer", "mode", "cycle", "job")
"""The keyword arguments `tasks.measure` accepts; anything else is a bad request. The last four
are set by beat: the registered node behind the target, the schedule, and the cycle and job
this test belongs to."""

MODES = ("mesh", "star", "aggregate", "sampled")


class BadRequest(ValueError):
    """An ad-hoc request that cannot run. Its text says which argument and why."""


@dataclass(frozen=True)
class Request:
    target: str
    name: str
    tool: str
    port: int
    length_s: int
    parallel: int
    protocol: str
    directions: tuple[str, ...]
    udp_bandwidth_bps: int
    bind_address: str | None = None
    peer: str | None = None
    mode: str | None = None
    cycle: str | None = None
    job: str | None = None

    def longest_run_s(self, timeout_margin_s: float) -> float:
        """Seconds the test can take at most: each direction is killed at length + margin."""
        return len(self.directions) * (self.length_s + timeout_margin_s)

    def spec(self, direction: str, timeout_margin_s: float) -> TestSpec:
        return TestSpec(tool=self.tool, target=self.target, port=self.port,
                        length_s=self.length_s, reverse=direction == "upload",
                        protocol=self.protocol, parallel=self.parallel,
                        udp_bandwidth_bps=self.udp_bandwidth_bps,
                        timeout_margin_s=timeout_margin_s, bind_address=self.bind_address)


def _whole(options: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRequest(f"{key} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{key} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise BadRequest(f"{key} must be between {low} and {high}, got {number}")
    return number


def parse_request(options: Mapping[str, Any], settings: config.Settings) -> Request:
    """Check a request's keyword arguments against OPTIONS and the settings' defaults."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BadRequest(f"unknown argument(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(OPTIONS)}")
    raw_target = options.get("target")
    if not isinstance(raw_target, str) or not raw_target:
        raise BadRequest("target is required: an IP address or DNS name")
    try:
        target = validate_target(raw_target)
    except ValueError as exc:
        raise BadRequest(f"target: {exc}") from None
    name = options.get("name") or target
    if not isinstance(name, str) or len(name) > 200:
        raise BadRequest(f"name must be a short string, got {name!r}")

    tool = options.get("tool") or settings.tool
    if tool not in TOOLS:
        raise BadRequest(f"tool must be one of {', '.join(TOOLS)}, got {tool!r}")
    protocol = options.get("protocol") or settings.protocol
    if protocol not in PROTOCOLS:
        raise BadRequest(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")

    directions = options.get("directions")
    if directions is None:
        directions = settings.directions
    elif directions == "both":
        directions = DIRECTIONS
    elif isinstance(directions, str):
        directions = (directions,)
    if (not isinstance(directions, (list, tuple)) or not directions
            or any(d not in DIRECTIONS for d in directions)):
        raise BadRequest(f"directions must be download, upload or both, got {directions!r}")

    udp = options.get("udp_bandwidth")
    if udp is None:
        udp_bps = settings.udp_bandwidth_bps
    else:
        try:
            udp_bps = config.parse_rate(str(udp))
        except ValueError as exc:
            raise BadRequest(f"udp_bandwidth: {exc}") from None

    bind = options.get("bind_address")
    if bind is not None:
        try:
            bind = validate_target(str(bind))
        except ValueError as exc:
            raise BadRequest(f"bind_address: {exc}") from None
    for field in ("cycle", "job", "peer"):
        value = options.get(field)
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            raise BadRequest(f"{field} must be a short string")
    mode = options.get("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}, got {mode!r}")

    request = Request(
        target=target, name=name, tool=tool,
        port=_whole(options, "port", settings.port_for(tool), 1, 65535),
        length_s=_whole(options, "length", settings.poll_length_s, 1, 3600),
        parallel=_whole(options, "parallel", settings.parallel, 1, 128),
        protocol=protocol,
        directions=tuple(dict.fromkeys(directions)),
        udp_bandwidth_bps=udp_bps, bind_address=bind, peer=options.get("peer"), mode=mode,
        cycle=options.get("cycle"), job=options.get("job"),
    )
    longest = config.longest_task_s(settings.lock_wait_s,
                                    request.longest_run_s(settings.timeout_margin_s))
    if longest >= settings.visibility_timeout_s:
        raise BadRequest(f"length {request.length_s} s is too long: the test could take "
                         f"{longest:.0f} s, beyond CBANDWIDTH_VISIBILITY_TIMEOUT="
                         f"{settings.visibility_timeout_s} s (Redis would hand it to a second "
                         f"worker while it runs)")
    return request


def overall_status(directions: list[DirectionResult]) -> str:
    """ok when every direction measured, failed when none did, partial otherwise."""
    good = sum(1 for d in directions if d.ok)
    if good == len(directions):
        return "ok"
    return "failed" if good == 0 else "partial"


def describe(direction: str, request: Request, node: str, outcome: DirectionResult) -> str:
    where = f"{direction} {node} -> {request.target} [{request.name}] ({request.tool})"
    if outcome.ok:
        return f"{where}: {outcome.bits_per_second / 1e6:.1f} Mbit/s"
    return f"{where}: FAILED {outcome.reason}: {outcome.error or 'no detail'}"


def measure(request: Request, settings: config.Settings,
            run: Callable[[TestSpec], DirectionResult],
            on_direction: Callable[..., None] | None = None) -> dict[str, Any]:
    """Run the request's directions one after the other (download first, as the original) and
    return the JSON result: status, and per direction an object with bits_per_second.

    `on_direction(direction, index, count, length_s, done)` is called before each direction
    (index from 1; `done` holds the directions measured so far)."""
    outcomes: dict[str, DirectionResult] = {}
    planned = [d for d in DIRECTIONS if d in request.directions]
    for index, direction in enumerate(planned, 1):
        if on_direction is not None:
            on_direction(direction, index, len(planned), request.length_s, dict(outcomes))
        outcome = _run_direction(run, request.spec(direction, settings.timeout_margin_s))
        outcomes[direction] = outcome
        text = describe(direction, request, settings.node_name, outcome)
        (log.info if outcome.ok else log.warning)(text)
    return build_result(request, settings, outcomes)


def _run_direction(run: Callable[[TestSpec], DirectionResult], spec: TestSpec
                   ) -> DirectionResult:
    """One direction; a runner that raises (a bug, output nobody foresaw) fails this direction
    with the exception's text instead of losing the whole test."""
    start = time.time()
    try:
        return run(spec)
    except Exception as exc:
        log.exception("the %s runner failed", spec.tool)
        return DirectionResult.failed(Reason.ERROR, f"internal error in the {spec.tool} runner: "
                                                    f"{type(exc).__name__}: {exc}",
                                      start, time.time())


def build_result(request: Request, settings: config.Settings,
                 outcomes: dict[str, DirectionResult]) -> dict[str, Any]:
    ordered = list(outcomes.values())
    result: dict[str, Any] = {
        "status": overall_status(ordered),
        "node": settings.node_name,
        "target": request.target,
        "name": request.name,
        "tool": request.tool,
        "protocol": request.protocol,
        "port": request.port,
        "parallel": request.parallel,
        "length": request.length_s,
        "start": min(o.start for o in ordered),
        "end": max(o.end for o in ordered),
    }
    for field in ("peer", "mode", "cycle", "job"):
        if getattr(request, field):
            result[field] = getattr(request, field)
    # The measuring node's prefixes name the series, as the original poller's did: the seed's
    # DaemonSet sets CBANDWIDTH_DOWNLOAD_PREFIX on the pollers.
    result["prefixes"] = {"download": settings.download_prefix,
                          "upload": settings.upload_prefix}
    for direction, outcome in outcomes.items():
        result[direction] = outcome.to_dict()
    return result


def not_run(request: Request, settings: config.Settings, reason: Reason,
            message: str) -> dict[str, Any]:
    """The result of a test that did not run: status data for each direction, no rate."""
    now = time.time()
    log.warning("%s -> %s [%s]: %s: %s", settings.node_name, request.target, request.name,
                reason.value, message)
    outcomes = {d: DirectionResult.failed(reason, message, now, now)
                for d in DIRECTIONS if d in request.directions}
    return build_result(request, settings, outcomes)


def abandoned(request: Request, settings: config.Settings, attempts: int) -> dict[str, Any]:
    """The worker running this test died more often than CBANDWIDTH_MAX_ATTEMPTS allows."""
    return not_run(request, settings, Reason.ABANDONED,
                   f"the worker running this test died {attempts - 1} times; giving up after "
                   f"CBANDWIDTH_MAX_ATTEMPTS={settings.max_attempts}")


def outcome(result: dict[str, Any]) -> str:
    """One word for cycle statistics: ok, partial, or failed:<first reason>."""
    if result["status"] != "failed":
        return result["status"]
    reasons = [result[d].get("reason") for d in DIRECTIONS if d in result]
    return f"failed:{next((r for r in reasons if r), Reason.ERROR.value)}"


def request_summary(request: Request) -> dict[str, Any]:
    return {k: v for k, v in asdict(request).items() if v is not None}
