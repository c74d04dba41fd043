"""``hubctl send``'s arguments (hub/cli_send.py): where the message comes from."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from hubspoke.hub.cli_parser import UsageError, build_parser
from hubspoke.hub.cli_send import message_of


def parse(*argv: str) -> tuple[str, str]:
    return message_of(build_parser().parse_args(["send", *argv]))


def test_the_words_after_the_agent_are_the_message_wherever_the_options_are() -> None:
    assert parse("ID", "--", "use", "the", "db") == ("ID", "use the db")
    assert parse("ID", "--json", "--", "-x", "--not-an-option") == ("ID", "-x --not-an-option")
    assert parse("ID", "--spoke", "s1", "--", "hi") == ("ID", "hi")
    assert parse("--spoke", "s1", "ID", "hello", "world") == ("ID", "hello world")
    assert build_parser().parse_args(["send", "ID", "--spoke", "s1", "--", "x"]).spoke == "s1"


def test_a_file_or_standard_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = tmp_path / "answer.txt"
    answer.write_text("line one\nline two\n")
    assert parse("ID", "--file", str(answer)) == ("ID", "line one\nline two\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("från stdin".encode())))
    assert parse("ID", "--file", "-") == ("ID", "från stdin")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("ID",), "send needs a message"),
        (("ID", "--file", "/nonexistent/answer"), "cannot read /nonexistent/answer"),
        (("ID", "--file", "F", "--", "text"), "TEXT or --file, not both"),
    ],
)
def test_usage_errors(argv: tuple[str, ...], says: str) -> None:
    with pytest.raises(UsageError, match=says):
        parse(*argv)


def test_a_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        parse("ID", "--file", str(raw))
