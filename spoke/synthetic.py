"""The synthetic agent: a deterministic fake agent for tests and demos.

Run as ``python -m hubspoke.spoke.synthetic`` (the built-in ``synthetic`` profile). It reads
the task from the ``HUBSPOKE_TASK`` environment variable, or from stdin when that
variable is not set. The task is a space-separated list of directives; words it
does not know (and directives with a malformed value) are ignored, so any free
text gives the default behaviour.

Directives:

- ``duration=SECONDS``: total run time, a number (default ``1.0``).
- ``steps=N``: number of progress reports, spread evenly over the duration
  (default ``5``; ``0`` reports none).
- ``exit=CODE``: exit code, 0 to 255 (default ``0``).
- ``fail``: the same as ``exit=1``.
- ``output=BYTES``: first print that many bytes of filler to stdout, in lines of
  at most 80 bytes.
- ``stderr=TEXT``: print TEXT (one word) to stderr.
- ``ignore_term``: ignore SIGTERM (so only SIGKILL stops it).
- ``spawn_child``: start a grandchild ``sleep`` in the same process group that
  lives as long as the agent; its pid is printed as ``CHILD <pid>``.
- ``receipt=completed|blocked|failed|none``: the final receipt status; the default
  is ``completed`` for exit code 0 and ``failed`` otherwise; ``none`` prints no
  receipt.

Stdout: progress lines ``PROGRESS <percent> <message>`` (one per step, flushed),
then, as the LAST line, the JSON receipt::

    {"status": "completed", "summary": "...", "artifacts": [],
     "verification": [{"name": "synthetic", "status": "passed"}]}

(the verification status is ``failed`` unless the receipt status is ``completed``).

Standard library only, and quick to start.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

__all__ = ["Directives", "main", "parse_directives"]

RECEIPTS = ("completed", "blocked", "failed", "none")
_MAX_STEPS = 100_000


class Directives:
    """What the synthetic agent has been told to do.

    A plain class rather than a dataclass: importing dataclasses costs ~12 ms, and
    this module should start fast.
    """

    __slots__ = (
        "duration",
        "exit_code",
        "ignore_term",
        "output",
        "receipt",
        "spawn_child",
        "stderr",
        "steps",
    )

    def __init__(
        self,
        *,
        duration: float = 1.0,
        steps: int = 5,
        exit_code: int = 0,
        output: int = 0,
        stderr: str | None = None,
        ignore_term: bool = False,
        spawn_child: bool = False,
        receipt: str | None = None,
    ) -> None:
        self.duration = duration
        self.steps = steps
        self.exit_code = exit_code
        self.output = output
        self.stderr = stderr
        self.ignore_term = ignore_term
        self.spawn_child = spawn_child
        self.receipt = receipt
        """None: derived from the exit code."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Directives({fields})"


def parse_directives(task: str) -> Directives:
    """Parse the task text; unknown words and malformed values are ignored."""
    duration, steps, exit_code, output = 1.0, 5, 0, 0
    stderr: str | None = None
    ignore_term = spawn_child = False
    receipt: str | None = None
    for word in task.split():
        key, sep, value = word.partition("=")
        try:
            if not sep:
                if key == "fail":
                    exit_code = 1
                elif key == "ignore_term":
                    ignore_term = True
                elif key == "spawn_child":
                    spawn_child = True
            elif key == "duration":
                seconds = float(value)
                if seconds >= 0 and seconds != float("inf"):
                    duration = seconds
            elif key == "steps":
                steps = min(max(int(value), 0), _MAX_STEPS)
            elif key == "exit":
                code = int(value)
                if 0 <= code <= 255:
                    exit_code = code
            elif key == "output":
                output = max(int(value), 0)
            elif key == "stderr":
                stderr = value
            elif key == "receipt" and value in RECEIPTS:
                receipt = value
        except ValueError:
            continue
    return Directives(
        duration=duration,
        steps=steps,
        exit_code=exit_code,
        output=output,
        stderr=stderr,
        ignore_term=ignore_term,
        spawn_child=spawn_child,
        receipt=receipt,
    )


def _print_filler(count: int) -> None:
    line = b"x" * 79 + b"\n"
    block = line * 1024
    out = sys.stdout.buffer
    while count >= len(block):
        out.write(block)
        count -= len(block)
    while count >= len(line):
        out.write(line)
        count -= len(line)
    if count:
        out.write(b"x" * (count - 1) + b"\n")
    out.flush()


def _spawn_sleeper() -> int:
    argv = ["sleep", "86400"]
    try:
        pid = os.posix_spawnp("sleep", argv, dict(os.environ))
    except OSError:
        code = "import time; time.sleep(86400)"
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], dict(os.environ))
    return pid


def _stop_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def run(d: Directives) -> int:
    """Act out the directives; returns the exit code."""
    if d.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child: int | None = None
    if d.spawn_child:
        child = _spawn_sleeper()
        print(f"CHILD {child}", flush=True)
    try:
        if d.stderr is not None:
            print(d.stderr, file=sys.stderr, flush=True)
        if d.output:
            _print_filler(d.output)
        start = time.monotonic()
        if d.steps == 0:
            time.sleep(d.duration)
        for step in range(1, d.steps + 1):
            delay = start + d.duration * step / d.steps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            percent = step * 100 // d.steps
            print(f"PROGRESS {percent} step {step}/{d.steps}", flush=True)
        status = d.receipt or ("completed" if d.exit_code == 0 else "failed")
        if status != "none":
            receipt = {
                "status": status,
                "summary": f"synthetic agent ran {d.duration:g}s, exit code {d.exit_code}",
                "artifacts": [],
                "verification": [
                    {"name": "synthetic", "status": "passed" if status == "completed" else "failed"}
                ],
            }
            print(json.dumps(receipt), flush=True)
    finally:
        if child is not None:
            _stop_child(child)
    return d.exit_code


def main() -> int:
    task = os.environ.get("HUBSPOKE_TASK")
    if task is None:
        task = sys.stdin.read()
    try:
        return run(parse_directives(task))
    except BrokenPipeError:
        # Nobody reads our output any more; exit quietly (stderr may be gone too).
        os._exit(141)


if __name__ == "__main__":
    sys.exit(main())
