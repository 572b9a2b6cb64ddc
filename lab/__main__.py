"""Maintenance commands: ``python -m lab preflight`` and ``python -m lab cleanup [PREFIX]``.

``preflight`` lists what this machine lacks for a full lab (exit 1 if anything); ``cleanup``
removes what crashed lab runs left behind (labs of live processes are not touched).
"""

from __future__ import annotations

import sys

from .netns import DEFAULT_PREFIX, cleanup_stale
from .preflight import preflight


def main(argv: list[str]) -> int:
    if argv[:1] == ["preflight"]:
        problems = preflight()
        for problem in problems:
            print(problem)
        print("lab prerequisites: " + ("MISSING" if problems else "ok"))
        return 1 if problems else 0
    if argv[:1] == ["cleanup"]:
        for item in cleanup_stale(argv[1] if len(argv) > 1 else DEFAULT_PREFIX):
            print("removed", item)
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
