"""hubctl's output: human-readable text escapes control characters, --json stays exact."""

from __future__ import annotations

import json

import pytest

from hubspoke import client as hc
from hubspoke.gen.federation.v1 import agent_pb2
from hubspoke.hub import cli, cli_output

ESC_TAIL = "step 1\n\x1b[2J\x1b[Hstate     SUCCEEDED\r\x9b1A\u202eevil\tok\n"


def _agent(**fields: object) -> hc.Agent:
    return hc.Agent.from_proto(agent_pb2.Agent(**fields))  # type: ignore[arg-type]  # test values


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("over\rwrite", "over\\rwrite"),
        ("a\nb\tc", "a\\nb\\tc"),
        ("\x7f\x9b\x00", "\\x7f\\x9b\\x00"),
        ("\u202eabc\u2066", "\\u202eabc\\u2066"),
        ("naïve ✓ 日本", "naïve ✓ 日本"),
    ],
)
def test_escape_shows_every_control_character(text: str, shown: str) -> None:
    assert cli_output.escape(text) == shown


def test_escape_lines_keeps_newlines_and_tabs() -> None:
    assert cli_output.escape_lines("a\n\tb\x1b[Ac\r\n") == "a\n\tb\\x1b[Ac\\r\n"


def test_status_text_escapes_tails_messages_and_fields() -> None:
    agent = _agent(
        agent_id="a1",
        spoke="s1",
        profile="synthetic",
        state=agent_pb2.Agent.STATE_FAILED,
        reason="EXIT\x1bNONZERO",
        progress_percent=50,
        progress_message="half\x1b[1Kway",
        stdout_tail=ESC_TAIL,
        receipt=agent_pb2.Receipt(status="failed", summary="\x1b]0;title\x07done"),
    )
    text = "\n".join(cli_output.agent_lines(agent))
    assert not any(ord(c) < 0x20 and c not in "\n\t" for c in text)
    assert "\x9b" not in text
    assert "\u202e" not in text
    assert "state     FAILED (EXIT\\x1bNONZERO)" in text
    assert "\\x1b[2J\\x1b[Hstate     SUCCEEDED\\r\\x9b1A\\u202eevil\tok" in text
    assert "progress  50% half\\x1b[1Kway" in text
    assert "receipt   failed: \\x1b]0;title\\x07done" in text


def test_json_keeps_the_raw_text() -> None:
    agent = _agent(agent_id="a1", stdout_tail=ESC_TAIL)
    doc = cli.agent_json(agent)
    assert doc["stdout_tail"] == ESC_TAIL
    assert json.loads(json.dumps(doc))["stdout_tail"] == ESC_TAIL


def test_tables_escape_every_cell() -> None:
    lines = cli_output.table([["AGENT", "STATE"], ["a\x1b[1A", "RUNNING"]])
    assert lines == ["AGENT     STATE", "a\\x1b[1A  RUNNING"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "hubctl"
    assert out[1][0].isdigit()
