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
- ``receipt=completed|blocked|failed|none|malformed``: the final receipt status; the
  default is ``completed`` for exit code 0 and ``failed`` otherwise; ``none`` prints no
  receipt; ``malformed`` prints a last line that starts like a receipt but is not JSON.
- ``verify=NAME``: add a verification item ``{"kind": "check", "value": NAME,
  "expected": "passed"}`` with no status, i.e. not passed (repeatable): a completed
  receipt then leaves the agent NEEDS_VERIFICATION until ``hubctl verify``.
- ``rich``: the richer receipt shape: artifacts as objects as well as strings, and
  ``blockers``.
- ``fenced``: print the receipt pretty-printed inside a ```` ```json ```` fence, with prose
  before and after it, instead of as the last line.
- ``wait_input``: instead of the timed steps, wait (up to the duration) until a message
  arrives in the inbox (``HUBSPOKE_INBOX``), then finish.

Input (``hubctl send``): every message in the inbox (a file, or a FIFO, of JSON lines
``{"seq", "from", "text", "time"}``) is echoed as ``INPUT <seq> <from> <text>``: those there
at the start, and with ``wait_input`` the one that ends the wait. An attempt that finds a
message in its inbox answers ``receipt=blocked`` with a completed receipt (it got its
answer), and its summary ends with ``input: <latest text>``; ``HUBSPOKE_INPUT`` (the latest
message, set on an attempt resumed by one) counts as such a message when there is no inbox.

Stdout: progress lines ``PROGRESS <percent> <message>`` (one per step, flushed),
then, as the LAST line, the JSON receipt::

    {"status": "completed", "summary": "...", "artifacts": [],
     "verification": [{"name": "synthetic", "status": "passed"}]}

(the verification status is ``failed`` unless the receipt status is ``completed``).
With ``rich``, ``"artifacts"`` is ``[{"kind": "file", "path": "synthetic/report.txt"},
"synthetic.log"]`` and ``"blockers"`` is ``[{"reason": "synthetic blocker"}]``.

Standard library only, and quick to start.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time

__all__ = ["Directives", "main", "parse_directives"]

RECEIPTS = ("completed", "blocked", "failed", "none", "malformed")
_MAX_STEPS = 100_000


class Directives:
    """What the synthetic agent has been told to do.

    A plain class rather than a dataclass: importing dataclasses costs ~12 ms, and
    this module should start fast.
    """

    __slots__ = (
        "duration",
        "exit_code",
        "fenced",
        "ignore_term",
        "output",
        "receipt",
        "rich",
        "spawn_child",
        "stderr",
        "steps",
        "verify",
        "wait_input",
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
        verify: tuple[str, ...] = (),
        rich: bool = False,
        fenced: bool = False,
        wait_input: bool = False,
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
        self.verify = verify
        """Names of verification items left unpassed."""
        self.rich = rich
        self.fenced = fenced
        self.wait_input = wait_input

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Directives({fields})"


def parse_directives(task: str) -> Directives:
    """Parse the task text; unknown words and malformed values are ignored."""
    duration, steps, exit_code, output = 1.0, 5, 0, 0
    stderr: str | None = None
    ignore_term = spawn_child = rich = fenced = wait_input = False
    receipt: str | None = None
    verify: list[str] = []
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
                elif key == "rich":
                    rich = True
                elif key == "fenced":
                    fenced = True
                elif key == "wait_input":
                    wait_input = True
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
            elif key == "verify" and value:
                verify.append(value)
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
        verify=tuple(verify),
        rich=rich,
        fenced=fenced,
        wait_input=wait_input,
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


class _Inbox:
    """The agent's inbox as it reads it: every whole JSON line so far (module docstring).
    A regular file is read on from where the last read stopped; a FIFO is held open."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.messages: list[dict[str, object]] = []
        self._fifo: int | None = None
        self._offset = 0
        self._buf = b""

    def _chunk(self, path: str) -> bytes:
        if self._fifo is None and stat.S_ISFIFO(os.stat(path).st_mode):
            self._fifo = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if self._fifo is not None:
            try:
                return os.read(self._fifo, 65536)
            except BlockingIOError:
                return b""
        with open(path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        return data

    def read(self) -> list[dict[str, object]]:
        """The messages that arrived since the last call."""
        if not self.path:
            return []
        try:
            self._buf += self._chunk(self.path)
        except OSError:
            return []
        fresh: list[dict[str, object]] = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                fresh.append(doc)
        self.messages += fresh
        return fresh


def _echo(messages: list[dict[str, object]]) -> None:
    for m in messages:
        text = str(m.get("text", "")).replace("\n", " ")
        print(f"INPUT {m.get('seq')} {m.get('from')} {text}", flush=True)


def _print_receipt(d: Directives, status: str, answer: str | None = None) -> None:
    items: list[dict[str, str]] = [
        {"name": "synthetic", "status": "passed" if status == "completed" else "failed"}
    ]
    items += [{"kind": "check", "value": name, "expected": "passed"} for name in d.verify]
    receipt: dict[str, object] = {
        "status": status,
        "summary": f"synthetic agent ran {d.duration:g}s, exit code {d.exit_code}"
        + (f"; input: {answer}" if answer is not None else ""),
        "artifacts": [],
        "verification": items,
    }
    if d.rich:
        receipt["artifacts"] = [{"kind": "file", "path": "synthetic/report.txt"}, "synthetic.log"]
        receipt["blockers"] = [{"reason": "synthetic blocker"}]
    if d.fenced:
        text = json.dumps(receipt, indent=2)
        print(f"Here is my receipt:\n```json\n{text}\n```\nThat is all.", flush=True)
    else:
        print(json.dumps(receipt), flush=True)


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
        inbox = _Inbox(os.environ.get("HUBSPOKE_INBOX"))
        _echo(inbox.read())
        start = time.monotonic()
        if d.wait_input:
            before = len(inbox.messages)
            while len(inbox.messages) == before and time.monotonic() - start < d.duration:
                time.sleep(0.05)
                _echo(inbox.read())
        elif d.steps == 0:
            time.sleep(d.duration)
        for step in range(1, 0 if d.wait_input else d.steps + 1):
            delay = start + d.duration * step / d.steps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            percent = step * 100 // d.steps
            print(f"PROGRESS {percent} step {step}/{d.steps}", flush=True)
        status = d.receipt or ("completed" if d.exit_code == 0 else "failed")
        answer: str | None = None
        if inbox.messages:
            answer = str(inbox.messages[-1].get("text", ""))
        elif "HUBSPOKE_INPUT" in os.environ:
            answer = os.environ["HUBSPOKE_INPUT"]
        if answer is not None and status == "blocked":
            status = "completed"  # it got its answer
        if status == "malformed":
            print('{"status": "completed", "summary": "cut short', flush=True)
        elif status != "none":
            _print_receipt(d, status, answer)
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
