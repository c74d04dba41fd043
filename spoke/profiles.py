"""Agent profiles: how the spoke launches one kind of agent.

A profile is the spoke operator's description of an agent program. It never goes
through a shell: ``argv`` is executed directly, and the placeholder ``{task}`` in
any element is replaced by the task text (plain substring replacement, so other
braces are left alone).

Task placement (option injection). An element that *begins* with ``{task}`` lets the
caller choose how the program reads it: ``--junitxml=PATH`` given to ``pytest -q {task}``
is an option, not a test path. Such an element *exposes* the task unless an earlier
element is exactly ``--`` (the end of options for most programs). A profile that exposes
its task must declare ``task_pattern``, a full-match regular expression every task must
match (or be ``unsafe``, whose task is code it runs anyway); otherwise the profile is
refused when the config is loaded, so no spoke starts with the hole. At spawn, and again
right before the argv is built, :func:`task_refusal` refuses a task that does not match
the profile's ``task_pattern``, and a task that starts with ``-`` where the profile exposes
it, whatever the pattern says.

Secrets. ``secrets = { GITHUB_TOKEN = "/etc/hubspoke/secrets/gh" }`` names environment
variables whose values the spoke reads from files when it starts each agent, so callers never
put credentials in a task. Each file must be readable by its owner only (the check key files
get, :func:`hubspoke.keys.owner_only_problem`): spoked refuses to start, naming the profile and
the file, when one is missing or group- or world-accessible (:func:`check_secret_files`), and
the runtime reads them again at every start, so a rotated file takes effect without a restart.
Values are added to the agent's environment explicitly, whatever ``inherit_env`` says, and are
never logged, stored or put in a reply or error.

Profiles come from TOML tables (``[profiles.<name>]``) validated by
:func:`profile_from_mapping`; the built-in ``synthetic`` profile runs the
deterministic fake agent in :mod:`hubspoke.spoke.synthetic`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from hubspoke.errors import ConfigError, InvalidCommandError
from hubspoke.keys import owner_only_problem

from .inbox_files import INBOX_KINDS
from .runmode import Mode, parse_mode

__all__ = [
    "Profile",
    "ProfileConfigError",
    "TaskRefusedError",
    "check_secret_files",
    "check_task",
    "exposed_element",
    "profile_from_mapping",
    "shell_profile",
    "synthetic_profile",
    "task_refusal",
]

TASK_PLACEHOLDER = "{task}"
END_OF_OPTIONS = "--"
SYNTHETIC = "synthetic"
RESERVED_ENV_PREFIX = "HUBSPOKE_"
"""Variables the spoke sets itself (HUBSPOKE_TASK, ...); a secret may not take these names."""


class ProfileConfigError(ConfigError):
    """A profile table is invalid; the message is one line naming the profile and key."""


class TaskRefusedError(InvalidCommandError):
    """A task this profile must not run as given (INVALID_ARGUMENT, before anything is stored)."""


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
    task_pattern: str | None = None
    """A regular expression (Python ``re``) every task must match in full; required when an
    argv element begins with ``{task}`` with no ``--`` element before it."""
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
    """The profile runs arbitrary code (e.g. the shell profile). Such a task is code already,
    so the profile may begin an argv element with ``{task}`` without a ``task_pattern``."""
    start_within_s: float = 0.0
    """The start deadline, in seconds after acceptance, of a spawn of this profile that names
    none; 0: the spoke's ``default_start_within_s`` (spoke/deadline.py)."""
    secrets: Mapping[str, str] = field(default_factory=_empty_env, hash=False)
    """Environment variable -> absolute path of an owner-only file holding its value, read
    when each agent starts (see the module docstring)."""
    inbox: str = "file"
    """How ``hubctl send`` messages reach the agent (spoke/inbox_files.py): ``file`` (a file
    of JSON lines), ``fifo`` (a named pipe) or ``none``; its path is ``HUBSPOKE_INBOX``."""
    mode: Mode | None = None
    """This profile's run mode (live, synthetic, shadow); None: the spoke's. It can only
    make the spoke's more cautious (spoke/modes.py)."""

    _task_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Normalise so that a list or dict passed by a caller cannot be mutated later.
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "secrets", MappingProxyType(dict(self.secrets)))
        if self.task_pattern is not None:
            object.__setattr__(self, "_task_re", _compile(self.name, self.task_pattern))
        exposed = exposed_element(self.argv)
        if exposed is not None and self.task_pattern is None and not self.unsafe:
            raise _err(
                self.name,
                "argv",
                f"element {exposed} ({self.argv[exposed]!r}) begins with {TASK_PLACEHOLDER}, "
                "so a task starting with '-' would be read as an option: put a \"--\" element "
                "before it, or declare task_pattern",
            )


def exposed_element(argv: tuple[str, ...]) -> int | None:
    """The index of the first argv element that begins with ``{task}`` before any ``--``.

    An element that merely contains ``{task}`` after a fixed prefix (``--task={task}``)
    does not expose it: the profile, not the task, decides what that element is.
    """
    for index, element in enumerate(argv):
        if index > 0 and element == END_OF_OPTIONS:
            return None
        if element.startswith(TASK_PLACEHOLDER):
            return index
    return None


def task_refusal(profile: Profile, task: str) -> str | None:
    """Why ``profile`` must not run ``task`` (one line), or None when it may.

    Refused: a task that does not match the profile's ``task_pattern`` in full, and a task
    starting with ``-`` that an argv element would expose (see the module docstring).
    """
    pattern = profile._task_re
    if pattern is not None and pattern.fullmatch(task) is None:
        return f"task does not match the task_pattern of profile {profile.name!r}"
    if task.startswith("-") and exposed_element(profile.argv) is not None:
        return (
            f"profile {profile.name!r} would pass a task starting with '-' to its program "
            "as an option"
        )
    return None


def check_secret_files(profile: Profile) -> None:
    """Refuse a profile whose secret files are missing or accessible to group or others.

    Raises :class:`ProfileConfigError` naming the profile, the variable and the file (never
    its content). spoked runs this at start-up for every configured profile.
    """
    for var, path in profile.secrets.items():
        problem = owner_only_problem(Path(path), "secret file")
        if problem:
            raise _err(profile.name, "secrets", f"names {var}, but {problem}")


def check_task(profile: Profile, task: str) -> None:
    """Raise :class:`TaskRefusedError` (INVALID_ARGUMENT) if ``profile`` must not run ``task``."""
    refusal = task_refusal(profile, task)
    if refusal is not None:
        raise TaskRefusedError(refusal)


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
        "task_pattern",
        "timeout_seconds",
        "kill_grace_seconds",
        "max_attempts",
        "retry_safe",
        "max_concurrency",
        "start_within_seconds",
        "unsafe",
        "secrets",
        "inbox",
        "mode",
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


def _compile(name: str, pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise _err(name, "task_pattern", "must be a non-empty string (a regular expression)")
    _check_text(name, "task_pattern", pattern, "the pattern")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise _err(name, "task_pattern", f"is not a valid regular expression: {exc}") from exc


def _pattern(name: str, raw: Mapping[str, object], default: str | None) -> str | None:
    if "task_pattern" not in raw:
        return default
    pattern = raw["task_pattern"]
    if not isinstance(pattern, str):
        raise _err(name, "task_pattern", "must be a non-empty string (a regular expression)")
    return pattern


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


def _secrets(
    name: str, raw: Mapping[str, object], env: Mapping[str, str], default: Mapping[str, str]
) -> Mapping[str, str]:
    if "secrets" not in raw:
        return default
    table = raw["secrets"]
    if not isinstance(table, Mapping):
        raise _err(name, "secrets", 'must be a table of VARIABLE = "/absolute/path"')
    checked: dict[str, str] = {}
    for var, path in table.items():
        if not isinstance(var, str) or not isinstance(path, str):
            raise _err(name, "secrets", 'must be a table of VARIABLE = "/absolute/path"')
        if not var or "=" in var or "\x00" in var:
            raise _err(name, "secrets", f"has an invalid variable name {var!r}")
        if var.startswith(RESERVED_ENV_PREFIX):
            raise _err(name, "secrets", f"{var}: {RESERVED_ENV_PREFIX}* variables are the spoke's")
        if var in env:
            raise _err(name, "secrets", f"{var} is also set in env; name it in one place")
        _check_text(name, "secrets", path, f"the path of {var}")
        if not os.path.isabs(path):
            raise _err(name, "secrets", f"{var}: the path {path!r} must be absolute")
        checked[var] = path
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


def _mode(name: str, raw: Mapping[str, object]) -> Mode | None:
    if "mode" not in raw:
        return None
    try:
        return parse_mode(raw["mode"])
    except ValueError as exc:
        raise _err(name, "mode", str(exc)) from None


def _inbox(name: str, raw: Mapping[str, object], default: str) -> str:
    value = raw.get("inbox", default)
    if value not in INBOX_KINDS:
        raise _err(name, "inbox", f"must be one of {', '.join(INBOX_KINDS)}")
    return str(value)


def profile_from_mapping(name: str, raw: Mapping[str, object]) -> Profile:
    """Validate a TOML profile table and build the :class:`Profile`.

    Keys: ``argv`` (non-empty list of strings, required), ``cwd`` (string), ``env``
    (table of strings), ``inherit_env``, ``task_on_stdin``, ``retry_safe``,
    ``unsafe`` (booleans), ``task_pattern`` (a regular expression every task must match
    in full), ``timeout_seconds`` (> 0), ``kill_grace_seconds`` (>= 0), ``max_attempts``
    (integer >= 1), ``max_concurrency`` (integer >= 0, 0 = unlimited),
    ``start_within_seconds`` (> 0: the start deadline of a spawn that names none), ``secrets``
    (a table of environment variable = absolute path of an owner-only file), ``inbox``
    (``file``, ``fifo`` or ``none``: how ``hubctl send`` messages reach the agent), ``mode``
    (``live``, ``synthetic`` or ``shadow``: only ever more cautious than the spoke's).

    An ``argv`` element that begins with ``{task}`` needs a ``--`` element before it or a
    ``task_pattern`` (or ``unsafe = true``): see the module docstring.

    The name ``synthetic`` starts from the built-in profile: an empty table gives it
    unchanged, and any key given overrides it (``argv`` is then optional).

    Each secret file must exist and be readable by its owner only (checked here, when the
    config is loaded at start-up, and again by the runtime at every agent start).

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
    env = _env(name, raw, base.env)
    profile = Profile(
        name=name,
        argv=_argv(name, raw, base.argv if name == SYNTHETIC else None),
        cwd=_cwd(name, raw, base.cwd),
        env=env,
        inherit_env=_bool(name, raw, "inherit_env", base.inherit_env),
        task_on_stdin=_bool(name, raw, "task_on_stdin", base.task_on_stdin),
        task_pattern=_pattern(name, raw, base.task_pattern),
        timeout_s=_seconds(name, raw, "timeout_seconds", base.timeout_s, allow_zero=False),
        kill_grace_s=_seconds(name, raw, "kill_grace_seconds", base.kill_grace_s, allow_zero=True),
        max_attempts=_int(name, raw, "max_attempts", base.max_attempts, minimum=1),
        retry_safe=_bool(name, raw, "retry_safe", base.retry_safe),
        max_concurrency=_int(name, raw, "max_concurrency", base.max_concurrency, minimum=0),
        unsafe=_bool(name, raw, "unsafe", base.unsafe),
        start_within_s=_seconds(
            name, raw, "start_within_seconds", base.start_within_s, allow_zero=False
        ),
        secrets=_secrets(name, raw, env, base.secrets),
        inbox=_inbox(name, raw, base.inbox),
        mode=_mode(name, raw),
    )
    check_secret_files(profile)
    return profile
