"""Agent profiles: how the spoke launches one kind of agent.

A profile is the spoke operator's description of an agent program. It never goes
through a shell: ``argv`` is executed directly, and the placeholder ``{task}`` in
any element is replaced by the task text (plain substring replacement, so other
braces are left alone).

Profiles come from TOML tables (``[profiles.<name>]``) validated by
:func:`profile_from_mapping`; the built-in ``synthetic`` profile runs the
deterministic fake agent in :mod:`hubspoke.spoke.synthetic`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hubspoke.errors import ConfigError

__all__ = [
    "Profile",
    "ProfileConfigError",
    "profile_from_mapping",
    "shell_profile",
    "synthetic_profile",
]

TASK_PLACEHOLDER = "{task}"
SYNTHETIC = "synthetic"


class ProfileConfigError(ConfigError):
    """A profile table is invalid; the message is one line naming the profile and key."""


def _empty_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Profile:
    """How to launch one kind of agent (immutable)."""

    name: str
    """Profile name, as referenced by commands."""
    argv: tuple[str, ...]
    """argv template. Any element may contain ``{task}``, replaced by the task text. No shell."""
    cwd: str | None = None
    """Working directory of the agent; ``None`` keeps the spoke's."""
    env: Mapping[str, str] = field(default_factory=_empty_env, hash=False)
    """Extra environment variables for the agent."""
    inherit_env: bool = False
    """When False the child gets only PATH, HOME, LANG, ``env`` and the HUBSPOKE_* vars."""
    task_on_stdin: bool = True
    """Write the task text to the agent's stdin, then close it."""
    timeout_s: float = 3600.0
    """Default maximum run time in seconds."""
    kill_grace_s: float = 5.0
    """Seconds between SIGTERM and SIGKILL when stopping the agent."""
    max_attempts: int = 1
    """How many times a command may be attempted in total."""
    retry_safe: bool = False
    """The agent may be re-run after a crash (it is idempotent or restartable)."""
    max_concurrency: int = 0
    """Maximum agents of this profile running at once on the spoke; 0 = unlimited."""
    unsafe: bool = False
    """Documentation flag: the profile runs arbitrary code (e.g. the shell profile)."""

    def __post_init__(self) -> None:
        # Normalise so that a list or dict passed by a caller cannot be mutated later.
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))


def synthetic_profile() -> Profile:
    """The built-in ``synthetic`` profile: the deterministic fake agent."""
    return Profile(
        name=SYNTHETIC,
        argv=(sys.executable, "-m", "hubspoke.spoke.synthetic"),
        cwd=None,
        timeout_s=600.0,
        kill_grace_s=2.0,
        retry_safe=True,
    )


def shell_profile() -> Profile:
    """The ``shell`` profile: runs the task with ``sh -c``. Dev federation only (unsafe)."""
    return Profile(
        name="shell",
        argv=("sh", "-c", TASK_PLACEHOLDER),
        task_on_stdin=False,
        unsafe=True,
    )


_KNOWN_KEYS = frozenset(
    {
        "argv",
        "cwd",
        "env",
        "inherit_env",
        "task_on_stdin",
        "timeout_seconds",
        "kill_grace_seconds",
        "max_attempts",
        "retry_safe",
        "max_concurrency",
        "unsafe",
    }
)


def _err(name: str, key: str, problem: str) -> ProfileConfigError:
    return ProfileConfigError(f"profile {name!r}: key {key!r} {problem}")


def _check_text(name: str, key: str, value: str, what: str) -> None:
    if "\x00" in value:
        raise _err(name, key, f"{what} must not contain a NUL character")


def _argv(name: str, raw: Mapping[str, object], default: tuple[str, ...] | None) -> tuple[str, ...]:
    if "argv" not in raw:
        if default is None:
            raise _err(name, "argv", "is required (a non-empty list of strings)")
        return default
    argv = raw["argv"]
    if not isinstance(argv, list | tuple) or not argv:
        raise _err(name, "argv", "must be a non-empty list of strings")
    result: list[str] = []
    for element in argv:
        if not isinstance(element, str):
            raise _err(name, "argv", "must be a non-empty list of strings")
        _check_text(name, "argv", element, "an element")
        result.append(element)
    if not result[0]:
        raise _err(name, "argv", "must start with a non-empty program name")
    return tuple(result)


def _cwd(name: str, raw: Mapping[str, object], default: str | None) -> str | None:
    if "cwd" not in raw:
        return default
    cwd = raw["cwd"]
    if not isinstance(cwd, str) or not cwd:
        raise _err(name, "cwd", "must be a non-empty string")
    _check_text(name, "cwd", cwd, "the path")
    return cwd


def _env(name: str, raw: Mapping[str, object], default: Mapping[str, str]) -> Mapping[str, str]:
    if "env" not in raw:
        return default
    env = raw["env"]
    if not isinstance(env, Mapping):
        raise _err(name, "env", "must be a table of strings")
    checked: dict[str, str] = {}
    for var, value in env.items():
        if not isinstance(var, str) or not isinstance(value, str):
            raise _err(name, "env", "must be a table of strings")
        if not var or "=" in var:
            raise _err(name, "env", f"has an invalid variable name {var!r}")
        _check_text(name, "env", var, "a variable name")
        _check_text(name, "env", value, f"the value of {var!r}")
        checked[var] = value
    return checked


def _bool(name: str, raw: Mapping[str, object], key: str, default: bool) -> bool:
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, bool):
        raise _err(name, key, "must be a boolean (true or false)")
    return value


def _seconds(
    name: str, raw: Mapping[str, object], key: str, default: float, *, allow_zero: bool
) -> float:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(name, key, "must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise _err(name, key, f"must be a finite number of seconds {bound}")
    return seconds


def _int(name: str, raw: Mapping[str, object], key: str, default: int, *, minimum: int) -> int:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(name, key, f"must be an integer >= {minimum}")
    return value


def profile_from_mapping(name: str, raw: Mapping[str, object]) -> Profile:
    """Validate a TOML profile table and build the :class:`Profile`.

    Keys: ``argv`` (non-empty list of strings, required), ``cwd`` (string), ``env``
    (table of strings), ``inherit_env``, ``task_on_stdin``, ``retry_safe``,
    ``unsafe`` (booleans), ``timeout_seconds`` (> 0), ``kill_grace_seconds`` (>= 0),
    ``max_attempts`` (integer >= 1), ``max_concurrency`` (integer >= 0, 0 = unlimited).

    The name ``synthetic`` starts from the built-in profile: an empty table gives it
    unchanged, and any key given overrides it (``argv`` is then optional).

    Raises :class:`ProfileConfigError` on anything wrong, unknown keys included.
    """
    if not isinstance(name, str) or not name.strip():
        raise ProfileConfigError(f"profile {name!r}: the profile name must be a non-empty string")
    if not isinstance(raw, Mapping):
        raise ProfileConfigError(f"profile {name!r}: must be a table, not {type(raw).__name__}")
    for key in raw:
        if not isinstance(key, str) or key not in _KNOWN_KEYS:
            known = ", ".join(sorted(_KNOWN_KEYS))
            raise _err(name, str(key), f"is not a known profile key (known: {known})")

    base = synthetic_profile() if name == SYNTHETIC else Profile(name=name, argv=())
    return Profile(
        name=name,
        argv=_argv(name, raw, base.argv if name == SYNTHETIC else None),
        cwd=_cwd(name, raw, base.cwd),
        env=_env(name, raw, base.env),
        inherit_env=_bool(name, raw, "inherit_env", base.inherit_env),
        task_on_stdin=_bool(name, raw, "task_on_stdin", base.task_on_stdin),
        timeout_s=_seconds(name, raw, "timeout_seconds", base.timeout_s, allow_zero=False),
        kill_grace_s=_seconds(name, raw, "kill_grace_seconds", base.kill_grace_s, allow_zero=True),
        max_attempts=_int(name, raw, "max_attempts", base.max_attempts, minimum=1),
        retry_safe=_bool(name, raw, "retry_safe", base.retry_safe),
        max_concurrency=_int(name, raw, "max_concurrency", base.max_concurrency, minimum=0),
        unsafe=_bool(name, raw, "unsafe", base.unsafe),
    )
