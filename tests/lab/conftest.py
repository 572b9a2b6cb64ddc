"""Fixtures for the lab harness's own tests.

The lab needs root and system tools. Without them these tests skip with the reason, except in
CI (CI=true), where everything is supposed to be installed and a missing piece is a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lab import Lab, ci_strict


def skip_or_fail(problems: list[str]) -> None:
    """Skip the test for these missing prerequisites, or fail it in CI."""
    if problems:
        reason = "lab unavailable: " + "; ".join(problems)
        if ci_strict():
            pytest.fail(f"{reason} (CI=true: the CI setup must install these)")
        pytest.skip(reason)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab(**Lab kwargs)`` starts a Lab (after checking its prerequisites) and
    closes it when the test ends, whatever happened."""
    labs: list[Lab] = []

    def factory(**kwargs: object) -> Lab:
        lab = Lab(**kwargs)  # type: ignore[arg-type]
        skip_or_fail(lab.preflight())
        labs.append(lab)
        return lab.start()

    yield factory
    for lab in reversed(labs):
        lab.close()
