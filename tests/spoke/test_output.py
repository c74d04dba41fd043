from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubspoke.spoke.model import AgentState
from hubspoke.spoke.outcome import decide
from hubspoke.spoke.output import (
    MAX_ARTIFACTS,
    MAX_SUMMARY_CHARS,
    Artifact,
    OutputTail,
    Receipt,
    VerificationItem,
    parse_receipt,
)


def test_tail_keeps_everything_below_limit() -> None:
    tail = OutputTail(10)
    tail.write(b"abc")
    tail.write(b"def")
    assert tail.getvalue() == b"abcdef"
    assert tail.text() == "abcdef"
    assert tail.total_bytes == 6
    assert not tail.truncated
    assert len(tail) == 6


def test_tail_keeps_last_bytes() -> None:
    tail = OutputTail(5)
    for chunk in (b"0123", b"4567", b"89"):
        tail.write(chunk)
    assert tail.getvalue() == b"56789"
    assert tail.total_bytes == 10
    assert tail.truncated


def test_tail_single_write_larger_than_limit() -> None:
    tail = OutputTail(4)
    tail.write(b"x" * 1000 + b"abcd")
    assert tail.getvalue() == b"abcd"
    tail.write(b"")
    assert tail.getvalue() == b"abcd"
    assert tail.total_bytes == 1004


def test_tail_exact_limit_is_not_truncated() -> None:
    tail = OutputTail(4)
    tail.write(b"abcd")
    assert not tail.truncated
    tail.write(b"e")
    assert tail.truncated
    assert tail.getvalue() == b"bcde"


def test_tail_zero_limit_counts_only() -> None:
    tail = OutputTail(0)
    tail.write(b"abc")
    assert tail.getvalue() == b""
    assert tail.total_bytes == 3
    assert tail.truncated


def test_tail_rejects_negative_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        OutputTail(-1)


def test_tail_text_replaces_cut_utf8() -> None:
    tail = OutputTail(3)
    tail.write("é€".encode())  # 2 + 3 bytes: the cut leaves the euro sign intact
    assert tail.text() == "€"
    tail.write(b"\xff")
    assert tail.text() == "\ufffd" * 3  # 82 ac ff: none of them starts a character


def _line(obj: object) -> str:
    return json.dumps(obj)


def _art(value: str) -> Artifact:
    return Artifact(value=value, json=json.dumps(value))


def test_receipt_full() -> None:
    line = _line(
        {
            "status": "completed",
            "summary": "did it",
            "artifacts": ["a.txt", "b/c.txt"],
            "verification": [
                {"name": "tests", "status": "passed", "detail": "12 passed"},
                "lint",
            ],
        }
    )
    receipt = parse_receipt(f"PROGRESS 50 half\nsome log\n{line}\n\n")
    assert receipt == Receipt(
        status="completed",
        summary="did it",
        artifacts=(_art("a.txt"), _art("b/c.txt")),
        verifications=(
            VerificationItem(name="tests", status="passed", detail="12 passed"),
            VerificationItem(name="lint", status="unknown", detail=""),
        ),
        json=line,
    )
    assert receipt.usable
    assert [v.name for v in receipt.pending] == ["lint"]


@pytest.mark.parametrize("status", ["completed", "blocked", "failed"])
def test_receipt_minimal(status: str) -> None:
    receipt = parse_receipt(_line({"status": status}))
    assert receipt is not None
    assert receipt.status == status
    assert receipt.summary == ""
    assert receipt.artifacts == ()
    assert receipt.verifications == ()
    assert receipt.blockers == ()
    assert receipt.error == ""


def test_receipt_verifications_alias_and_crlf() -> None:
    line = _line({"status": "blocked", "verifications": [{"name": "x", "status": "skipped"}]})
    receipt = parse_receipt(f"log\r\n{line}\r\n")
    assert receipt is not None
    assert receipt.verifications == (VerificationItem("x", "skipped", ""),)


RICH = {
    "status": "completed",
    "summary": "opened a PR",
    "artifacts": [
        {"kind": "pr", "url": "https://example.test/pr/1", "title": "Fix"},
        "notes.md",
        {"kind": "blob", "sha": "abc"},
    ],
    "verification": [
        {"kind": "command", "value": "make test", "expected": "exit 0", "status": "passed"},
        {"kind": "url", "value": "https://example.test/staging", "expected": "200"},
        {"kind": "manual", "expected": "looks right"},
        {"expected": "nothing"},
        {"name": "lint", "passed": True},
        {"name": "types", "passed": False},
    ],
    "blockers": ["need a token", {"reason": "staging is down", "since": 3}, {"x": 1}],
}


@pytest.mark.parametrize("prose_after", ["", "\nThat is all.\n", "\n\n"])
def test_rich_receipt_in_a_fenced_block_is_kept_whole(prose_after: str) -> None:
    body = json.dumps(RICH, indent=2)
    text = f"thinking...\n{{not the receipt}}\nHere it is:\n```json\n{body}\n```{prose_after}"
    receipt = parse_receipt(text)
    assert receipt is not None
    assert receipt.error == ""
    assert receipt.json == body
    assert json.loads(receipt.json) == RICH
    assert receipt.artifacts == (
        Artifact(
            "https://example.test/pr/1",
            "pr",
            '{"kind":"pr","url":"https://example.test/pr/1","title":"Fix"}',
        ),
        _art("notes.md"),
        Artifact('{"kind":"blob","sha":"abc"}', "blob", '{"kind":"blob","sha":"abc"}'),
    )
    names = [v.name for v in receipt.verifications]
    assert names == [
        "make test",
        "https://example.test/staging",
        "manual",
        "item 4",
        "lint",
        "types",
    ]
    assert [v.status for v in receipt.verifications] == [
        "passed",
        "unknown",
        "unknown",
        "unknown",
        "passed",
        "failed",
    ]
    assert receipt.verifications[1] == VerificationItem(
        name="https://example.test/staging",
        status="unknown",
        kind="url",
        value="https://example.test/staging",
        expected="200",
    )
    assert receipt.blockers == ("need a token", "staging is down", '{"x":1}')
    assert [v.name for v in receipt.pending] == [*names[1:4], "types"]


def test_a_bare_fence_counts_when_it_holds_an_object_and_other_languages_do_not() -> None:
    receipt = parse_receipt('```\n{"status": "blocked"}\n```\n```python\nprint(1)\n```\n')
    assert receipt is not None
    assert receipt.status == "blocked"
    assert parse_receipt("```python\n{1: 2}\n```") is None
    assert parse_receipt("```\nplain text\n```") is None


def test_the_later_candidate_wins() -> None:
    fenced = '```json\n{"status": "failed"}\n```\n'
    line = _line({"status": "completed"})
    receipt = parse_receipt(f"{fenced}{line}\n")
    assert receipt is not None
    assert receipt.status == "completed"
    receipt = parse_receipt(f"{line}\n{fenced}then prose\n")
    assert receipt is not None
    assert receipt.status == "failed"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n  \n",
        "no receipt here",
        _line({"status": "completed"}) + "\nmore output after it",
        "```json\n",
        "```\n```",
    ],
)
def test_no_candidate_is_none(text: str) -> None:
    assert parse_receipt(text) is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"status": "completed"', "receipt: not JSON"),
        ("{not json at all}", "receipt: not JSON"),
        ("```json\n[1, 2]\n```", "receipt: not a JSON object"),
        ("```json\nnope\n```", "receipt: not JSON"),
        ('{"status": "completed", "n": ' + "9" * 5000 + "}", "receipt: not JSON"),
        ('{"status": "completed", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "receipt: not"),
    ],
)
def test_what_is_not_json_is_refused_with_a_reason(text: str, error: str) -> None:
    receipt = parse_receipt(text, max_bytes=10_000_000)
    assert receipt is not None
    assert receipt.error.startswith(error)
    assert receipt.status == ""
    assert not receipt.usable
    assert decide(0, receipt, 0, 1000).state == AgentState.SUCCEEDED


@pytest.mark.parametrize(
    "obj",
    [
        {"status": "done"},
        {"status": 1},
        {"summary": "no status"},
    ],
)
def test_an_object_with_an_unknown_status_is_kept_with_a_reason(obj: dict[str, object]) -> None:
    line = _line(obj)
    receipt = parse_receipt(line)
    assert receipt is not None
    assert receipt.json == line
    assert receipt.error.startswith("receipt: status")
    assert not receipt.usable


@pytest.mark.parametrize(
    "obj",
    [
        {"status": "completed", "artifacts": "a.txt"},
        {"status": "completed", "artifacts": [1]},
        {"status": "completed", "summary": 5},
        {"status": "completed", "verification": {"name": "x"}},
        {"status": "completed", "verification": [{"status": "passed"}]},
        {"status": "completed", "verification": [{"name": "x", "detail": 3}]},
        {"status": "completed", "verification": [42]},
    ],
)
def test_odd_shapes_are_read_leniently(obj: dict[str, object]) -> None:
    receipt = parse_receipt(_line(obj))
    assert receipt is not None
    assert receipt.usable
    assert receipt.json == _line(obj)


def test_receipt_strings_are_bounded() -> None:
    line = _line(
        {
            "status": "failed",
            "summary": "s" * 100_000,
            "artifacts": ["a" * 10] * 10_000,
            "verification": [{"name": "n" * 10_000, "status": "x" * 1000, "detail": "d" * 100_000}],
            "blockers": ["b" * 10_000] * 100,
        }
    )
    receipt = parse_receipt(line, max_bytes=10_000_000)
    assert receipt is not None
    assert len(receipt.summary) == MAX_SUMMARY_CHARS
    assert len(receipt.artifacts) == MAX_ARTIFACTS
    item = receipt.verifications[0]
    assert len(item.name) <= 256
    assert len(item.status) <= 64
    assert len(item.detail) <= 4096
    assert len(receipt.blockers) <= 64
    assert all(len(b) <= 2048 for b in receipt.blockers)
    assert receipt.json == line  # the text itself is kept whole


def test_receipt_over_max_bytes_is_refused_with_a_reason() -> None:
    line = _line({"status": "completed", "summary": "é" * 100})
    size = len(line.encode())
    over = parse_receipt(line, max_bytes=size - 1)
    assert over is not None
    assert over.error == f"receipt: over {size - 1} bytes ({size})"
    assert over.json == ""
    kept = parse_receipt(line, max_bytes=size)
    assert kept is not None
    assert kept.usable


@pytest.mark.parametrize(
    ("code", "obj", "state", "reason"),
    [
        (0, {"status": "completed"}, AgentState.SUCCEEDED, ""),
        (0, {"status": "completed", "verification": ["x"]}, AgentState.NEEDS_VERIFICATION, ""),
        (0, {"status": "blocked"}, AgentState.NEEDS_INPUT, "BLOCKED"),
        (0, {"status": "failed"}, AgentState.FAILED, "RECEIPT_FAILED"),
        (3, {"status": "completed"}, AgentState.FAILED, "EXIT_NONZERO"),
        (-9, {"status": "blocked"}, AgentState.FAILED, "SIGNALED"),
        (0, None, AgentState.SUCCEEDED, ""),
    ],
)
def test_the_outcome_table(
    code: int, obj: dict[str, object] | None, state: AgentState, reason: str
) -> None:
    receipt = None if obj is None else parse_receipt(_line(obj))
    outcome = decide(code, receipt, 1000, 120_000)
    assert outcome.state == state
    if state == AgentState.NEEDS_VERIFICATION:
        assert outcome.reason == "VERIFICATION_PENDING"
        assert outcome.fields["verify_deadline_ms"] == 121_000
        assert json.loads(str(outcome.fields["pending"])) == ["x"]
    else:
        assert outcome.reason == reason


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
)


@given(st.text())
def test_parse_receipt_never_raises(text: str) -> None:
    parse_receipt(text)


@given(_JSON)
def test_parse_receipt_never_raises_on_json(value: object) -> None:
    obj = {
        "status": "completed",
        "artifacts": value,
        "verification": value,
        "summary": value,
        "blockers": value,
    }
    receipt = parse_receipt(json.dumps(obj))
    assert receipt is not None
    assert receipt.usable


@given(st.dictionaries(st.text(), _JSON), st.text(), st.text(), st.booleans())
def test_any_object_is_kept_whole_in_a_fence_or_on_a_line(
    obj: dict[str, object], before: str, after: str, fenced: bool
) -> None:
    body = json.dumps(obj, indent=2 if fenced else None)
    before = before.replace("`", "")
    after = "".join(c for c in after if c not in "`{\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
    text = f"{before}\n```json\n{body}\n```\n{after}" if fenced else f"{before}\n{body}\n"
    receipt = parse_receipt(text)
    assert receipt is not None
    assert json.loads(receipt.json) == obj
    assert receipt.error == "" or receipt.error.startswith("receipt: status")
