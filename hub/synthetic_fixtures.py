"""The fixture tasks of ``hubctl synthetic-all``: read and checked from a TOML file, by default
the one shipped in the package (``hubspoke.hub.fixtures/synthetic.toml``; its header documents
the keys). A bad file fails with one line naming the fixture and the key."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from hubspoke.client import AgentState

__all__ = ["DEFAULT_FIXTURES", "SETTLED", "Fixture", "FixtureError", "load_fixtures", "select"]

DEFAULT_FIXTURES: Final = "synthetic.toml"
"""The shipped fixture file, in the package ``hubspoke.hub.fixtures``."""

_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEYS: Final = frozenset(
    {"name", "profile", "task", "expect", "reason", "timeout_seconds", "max_attempts"}
)
SETTLED: Final = frozenset(s for s in AgentState if s.settled)
"""The states a fixture may expect: where ``Client.wait`` returns."""


class FixtureError(ValueError):
    """The fixture file is missing, not TOML, or a fixture is invalid (one line)."""


@dataclass(frozen=True, slots=True)
class Fixture:
    """One task to run and the state it must settle in."""

    name: str
    profile: str
    task: str
    expect: AgentState
    reason: str = ""
    """When set, the agent's reason must be this too."""
    timeout_s: float | None = None
    max_attempts: int = 1


def load_fixtures(path: Path | None = None) -> list[Fixture]:
    """The fixtures of ``path``, or the shipped ones."""
    try:
        if path is None:
            text = resources.files("hubspoke.hub.fixtures").joinpath(DEFAULT_FIXTURES).read_text()
            where = DEFAULT_FIXTURES
        else:
            text, where = path.read_text(encoding="utf-8"), str(path)
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise FixtureError(f"cannot read fixtures {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FixtureError(f"fixtures {where}: not TOML: {exc}") from None
    tables = raw.get("fixture")
    if not isinstance(tables, list) or not tables:
        raise FixtureError(f"fixtures {where}: no [[fixture]] tables")
    fixtures = [_fixture(i, t) for i, t in enumerate(tables, 1)]
    names = [f.name for f in fixtures]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FixtureError(f"fixtures {where}: names used twice: {', '.join(dupes)}")
    return fixtures


def select(fixtures: Sequence[Fixture], only: Sequence[str]) -> list[Fixture]:
    """The fixtures named in ``only`` (all when empty); an unknown name is an error."""
    if not only:
        return list(fixtures)
    known = {f.name for f in fixtures}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise FixtureError(f"no fixture named {', '.join(unknown)} (known: {', '.join(known)})")
    return [f for f in fixtures if f.name in only]


def _fixture(index: int, table: object) -> Fixture:
    if not isinstance(table, Mapping):
        raise FixtureError(f"fixture {index}: must be a table")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FixtureError(f"fixture {index}: name must be 1-63 of A-Z a-z 0-9 . _ -")
    where = f"fixture {name!r}"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise FixtureError(f"{where}: unknown keys {', '.join(unknown)}")
    profile, task, reason = (
        table.get(k, d) for k, d in (("profile", "synthetic"), ("task", None), ("reason", ""))
    )
    for key, value in (("profile", profile), ("task", task), ("reason", reason)):
        if not isinstance(value, str) or (key != "reason" and not value):
            raise FixtureError(f"{where}: {key} must be a non-empty string")
    try:
        expect = AgentState.parse(str(table.get("expect", "")))
    except ValueError:
        expect = AgentState.UNSPECIFIED
    if expect not in SETTLED:
        states = ", ".join(sorted(s.name for s in SETTLED))
        raise FixtureError(f"{where}: expect must be one of {states}")
    timeout = table.get("timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise FixtureError(f"{where}: timeout_seconds must be a number > 0")
    attempts = table.get("max_attempts", 1)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise FixtureError(f"{where}: max_attempts must be an integer >= 1")
    return Fixture(
        name=name,
        profile=str(profile),
        task=str(task),
        expect=expect,
        reason=str(reason),
        timeout_s=float(timeout) if timeout is not None else None,
        max_attempts=attempts,
    )
