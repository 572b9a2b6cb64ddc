"""Property tests (Hypothesis): every input ends as a classified result or a BadRequest, never
a crash (issue 9). Inputs: real tool output from tests/unit/fixtures, truncated and mutated
(numbers replaced by non-finite, negative, huge or garbage values); random JSON as
tasks.measure keyword arguments; random results and names for the carbon line writer."""
from __future__ import annotations

import dataclasses
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.unit.fixtures import HERE, load_case
from workers import config
from workers.jobs import OPTIONS, BadRequest, Request, parse_request
from workers.measurement import DirectionResult, Reason
from workers.metrics import Prefixes, checked_line, result_lines, sanitize
from workers.runners import iperf2, iperf3, netperf

PARSERS = {"iperf3": iperf3.parse, "iperf2": iperf2.parse, "netperf": netperf.parse}
CASES = [(tool, path.stem) for tool in PARSERS for path in sorted((HERE / tool).glob("*.json"))]
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
REASONS = {r.value for r in Reason}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
ODD_NUMBERS = st.sampled_from(["inf", "-inf", "nan", "NaN", "Infinity", "-Infinity", "-1",
                               "-5e9", "0", "1e400", "9" * 400, "", "x", "1,2", "0x10", "1e"])


def _assert_classified(result: DirectionResult) -> None:
    assert isinstance(result, DirectionResult)
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, float):
            assert math.isfinite(value), (field.name, value)
    if result.ok:
        assert result.bits_per_second is not None and result.bits_per_second > 0, result
        assert result.reason is None
    else:
        assert result.status == "failed" and result.reason in REASONS
        assert result.bits_per_second is None


@st.composite
def mutated_output(draw):
    tool, case = draw(st.sampled_from(CASES))
    outcome, spec = load_case(tool, case)
    stdout = outcome.stdout
    numbers = list(_NUMBER.finditer(stdout))
    for _ in range(draw(st.integers(0, 3))):
        if numbers:
            match = draw(st.sampled_from(numbers))
            stdout = stdout[:match.start()] + draw(ODD_NUMBERS) + stdout[match.end():]
            numbers = list(_NUMBER.finditer(stdout))
    if draw(st.booleans()):
        stdout = stdout[:draw(st.integers(0, len(stdout)))]
    return tool, dataclasses.replace(outcome, stdout=stdout), spec


@pytest.mark.parametrize("tool, case", CASES)
def test_every_captured_output_parses_to_a_classified_result(tool, case):
    outcome, spec = load_case(tool, case)
    _assert_classified(PARSERS[tool](outcome, spec))


@FAST
@given(mutated_output())
def test_mutated_and_truncated_tool_output_is_classified_never_a_crash(sample):
    tool, outcome, spec = sample
    _assert_classified(PARSERS[tool](outcome, spec))


@FAST
@given(st.sampled_from(list(PARSERS)), st.text(max_size=400))
def test_random_text_is_classified(tool, stdout):
    outcome, spec = load_case(tool, next(case for t, case in CASES if t == tool))
    _assert_classified(PARSERS[tool](dataclasses.replace(outcome, stdout=stdout), spec))


# --- tasks.measure keyword arguments ----------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
PLAUSIBLE = st.sampled_from(["198.18.0.2", "h2", "::1", "[fd00::1]", "iperf3", "netperf",
                             "udp", "tcp", "both", "upload", "5", "0", "-1", "500M", "mesh",
                             "a" * 300, "-oProxy", "1e3", "10.0.0.1 ; rm"])
SETTINGS = config.load({"NODE_NAME": "h1"})


@FAST
@given(st.dictionaries(st.sampled_from(OPTIONS) | st.text(max_size=10),
                       JSON | PLAUSIBLE, max_size=8))
def test_any_json_keyword_arguments_are_a_request_or_a_bad_request(options):
    try:
        request = parse_request(options, SETTINGS)
    except BadRequest as exc:
        assert str(exc)
        return
    assert isinstance(request, Request)
    assert 1 <= request.port <= 65535 and request.length_s >= 1 and request.directions


# --- carbon lines -------------------------------------------------------------------------------

P = Prefixes("bandwidth.download", "bandwidth.upload", "bandwidth.status", "bandwidth.detail",
             "bandwidth.mesh", "bandwidth.scheduler")
NUMBERISH = (st.floats() | st.integers(-2**70, 2**70) | st.none() | st.text(max_size=5)
             | st.booleans())
DIRECTION = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["ok", "failed", "weird"]) | st.text(max_size=5),
    "bits_per_second": NUMBERISH, "start": NUMBERISH, "reason": st.text(max_size=12)
    | st.sampled_from(sorted(REASONS)), "retransmits": NUMBERISH, "jitter_ms": NUMBERISH,
    "cpu_local_percent": NUMBERISH})
RESULT = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=40), "node": st.text(max_size=20), "peer": st.text(max_size=20),
    "target": st.text(max_size=20), "mode": st.sampled_from(["mesh", "sampled", "star", "x"]),
    "start": NUMBERISH, "download": DIRECTION | JSON, "upload": DIRECTION | JSON,
    "lock": st.fixed_dictionaries({}, optional={"expired": st.booleans(),
                                                 "wait_s": NUMBERISH}) | JSON})


@FAST
@given(st.text())
def test_sanitize_makes_one_safe_path_component(text):
    assert re.fullmatch(r"[A-Za-z0-9_-]+", sanitize(text))


@FAST
@given(RESULT)
def test_any_result_becomes_well_formed_lines_never_a_crash(result):
    for entry in result_lines(result, P):
        assert checked_line(entry) == entry
        path, value, _ = entry.split(" ")
        assert math.isfinite(float(value))
        if path.startswith(("bandwidth.download.", "bandwidth.upload.", "bandwidth.mesh.")):
            assert float(value) >= 0  # a throughput line is a measured rate, never negative
