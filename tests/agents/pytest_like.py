"""Test agent that reads its arguments the way pytest does, for the option-injection tests.

Options come before ``--``; after it every argument is a test path. ``--junitxml=PATH``
writes a report to PATH (the harm an injected task could do), ``-q`` is accepted, any
other option fails with exit code 4 (as pytest's usage error). Each test path is printed
as ``PASSED <path>``; the exit code is 0.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    paths: list[str] = []
    options_done = False
    for arg in argv:
        if options_done or not arg.startswith("-"):
            paths.append(arg)
        elif arg == "--":
            options_done = True
        elif arg.startswith("--junitxml="):
            Path(arg.removeprefix("--junitxml=")).write_text("<testsuite/>\n")
        elif arg != "-q":
            print(f"ERROR: unknown option {arg}", file=sys.stderr)
            return 4
    for path in paths:
        print(f"PASSED {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
