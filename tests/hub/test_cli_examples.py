"""Every hubctl verb shows examples under --help, and every example parses as written."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hubspoke.hub import cli_parser

HUBCTL = str(Path(sys.executable).parent / "hubctl")
# Verbs whose parser is another program's (dev) or that bring their own examples.
OWN_HELP = {"dev", "completion"}


def _verbs() -> list[str]:
    parser = cli_parser.build_parser()
    sub = next(
        a for a in parser._actions if a.dest == "verb"
    )  # argparse has no public API for subparsers
    return sorted(sub.choices)  # type: ignore[arg-type]  # choices of a subparsers action is a dict


def test_every_verb_has_examples() -> None:
    assert sorted(set(_verbs()) - OWN_HELP) == sorted(cli_parser.EXAMPLES)


@pytest.mark.parametrize("verb", sorted(cli_parser.EXAMPLES))
def test_help_shows_the_examples(verb: str) -> None:
    done = subprocess.run([HUBCTL, verb, "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "examples:" in done.stdout
    for line in cli_parser.EXAMPLES[verb]:
        assert line in done.stdout


@pytest.mark.parametrize(
    "line", [line for lines in cli_parser.EXAMPLES.values() for line in lines], ids=lambda s: s[:60]
)
def test_every_example_parses(line: str) -> None:
    argv = shlex.split(line.split(" > ")[0])
    assert argv[0] == "hubctl"
    cli_parser.build_parser().parse_args(argv[1:])  # raises UsageError on a bad example
