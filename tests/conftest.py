"""Shared fixtures: a started lab with cloud-bandwidth's processes on it.

The lab needs root and system tools. Without them a test skips with the reason, except in CI
(CI=true), where everything must be installed and a missing piece is a failure.
"""
from __future__ import annotations

import shutil
from typing import Callable, Iterator

import pytest

from lab import Lab, LabError, ci_strict
from lab.process import wait_for


def skip_or_fail(problems: list[str]) -> None:
    """Skip the test for these missing prerequisites, or fail it in CI."""
    if problems:
        reason = "lab unavailable: " + "; ".join(problems)
        if ci_strict():
            pytest.fail(f"{reason} (CI=true: the CI setup must install these)")
        pytest.skip(reason)


def start_lab(**kwargs) -> Lab:
    lab = Lab(**kwargs)
    skip_or_fail(lab.preflight())
    return lab.start()


def require(*binaries: str) -> None:
    """Skip (or, with CI=true, fail) unless every binary is on PATH."""
    missing = [name for name in binaries if shutil.which(name) is None]
    if missing:
        message = f"not installed: {', '.join(missing)}"
        if ci_strict():
            pytest.fail(f"{message} (CI=true: the CI setup must install it)")
        pytest.skip(message)


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition",
               interval: float = 0.1) -> object:
    """Poll `predicate` until it returns something truthy (bounded); fail the test naming
    `what` when it does not."""
    try:
        return wait_for(predicate, timeout, what, interval)
    except LabError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab(**Lab kwargs)`` starts a Lab (after checking its prerequisites) and
    closes it when the test ends, whatever happened."""
    labs: list[Lab] = []

    def factory(**kwargs) -> Lab:
        lab = start_lab(**kwargs)
        labs.append(lab)
        return lab

    yield factory
    for lab in reversed(labs):
        lab.close()
