from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubspoke.spoke.output import (
    MAX_ARTIFACTS,
    MAX_SUMMARY_CHARS,
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
        artifacts=("a.txt", "b/c.txt"),
        verifications=(
            VerificationItem(name="tests", status="passed", detail="12 passed"),
            VerificationItem(name="lint", status="unknown", detail=""),
        ),
        json=line,
    )


@pytest.mark.parametrize("status", ["completed", "blocked", "failed"])
def test_receipt_minimal(status: str) -> None:
    receipt = parse_receipt(_line({"status": status}))
    assert receipt is not None
    assert receipt.status == status
    assert receipt.summary == ""
    assert receipt.artifacts == ()
    assert receipt.verifications == ()


def test_receipt_verifications_alias_and_crlf() -> None:
    line = _line({"status": "blocked", "verifications": [{"name": "x", "status": "skipped"}]})
    receipt = parse_receipt(f"log\r\n{line}\r\n")
    assert receipt is not None
    assert receipt.verifications == (VerificationItem("x", "skipped", ""),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n  \n",
        "no receipt here",
        _line({"status": "completed"}) + "\nmore output after it",
        _line({"status": "done"}),
        _line({"status": 1}),
        _line({"summary": "no status"}),
        _line(["status", "completed"]),
        '{"status": "completed"',
        _line({"status": "completed", "artifacts": "a.txt"}),
        _line({"status": "completed", "artifacts": [1]}),
        _line({"status": "completed", "summary": 5}),
        _line({"status": "completed", "verification": {"name": "x"}}),
        _line({"status": "completed", "verification": [{"status": "passed"}]}),
        _line({"status": "completed", "verification": [{"name": "x", "detail": 3}]}),
        _line({"status": "completed", "verification": [42]}),
        '{"status": "completed", "n": ' + "9" * 5000 + "}",
        '{"status": "completed", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_malformed_receipts_are_none(text: str) -> None:
    assert parse_receipt(text) is None


def test_receipt_strings_are_bounded() -> None:
    line = _line(
        {
            "status": "failed",
            "summary": "s" * 100_000,
            "artifacts": ["a" * 10] * 10_000,
            "verification": [{"name": "n" * 10_000, "status": "x" * 1000, "detail": "d" * 100_000}],
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


def test_receipt_line_over_max_bytes_is_none() -> None:
    line = _line({"status": "completed", "summary": "é" * 100})
    assert parse_receipt(line, max_bytes=len(line.encode()) - 1) is None
    assert parse_receipt(line, max_bytes=len(line.encode())) is not None


@given(st.text())
def test_parse_receipt_never_raises(text: str) -> None:
    parse_receipt(text)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    )
)
def test_parse_receipt_never_raises_on_json(value: object) -> None:
    obj = {"status": "completed", "artifacts": value, "verification": value, "summary": value}
    parse_receipt(json.dumps(obj))
