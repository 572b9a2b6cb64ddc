"""Exceptions of the lab harness."""

from __future__ import annotations

__all__ = ["LabError", "LabUnavailable"]


class LabError(RuntimeError):
    """A lab operation failed (a command exited non-zero, a service did not come up, teardown
    left something behind). The message names the command or part and includes its output."""


class LabUnavailable(LabError):
    """This machine cannot run the lab (not root, a tool missing); the message lists why."""
