"""An agent's inbox on disk (spoke/inbox_files.py): real files and real FIFOs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hubspoke.spoke.inbox_files import InboxFile, Message, inbox_path, line_of
from hubspoke.spoke.profiles import ProfileConfigError, profile_from_mapping


def msg(seq: int, text: str = "") -> Message:
    return Message(
        seq=seq, sender="alice", text=text or f"message {seq}", time_ms=1_700_000_000_123
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_is_one_json_object_with_seq_from_text_and_time() -> None:
    line = line_of(msg(3, "ja, bitte\nweiter"))
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # a newline in the text is escaped
    assert json.loads(line) == {
        "seq": 3,
        "from": "alice",
        "text": "ja, bitte\nweiter",
        "time": "2023-11-14T22:13:20.123Z",
    }


def test_a_file_inbox_is_written_whole_then_appended_and_removed(tmp_path: Path) -> None:
    path = inbox_path(tmp_path / "inboxes", "agent-1")
    inbox = InboxFile("file", path)
    inbox.prepare([msg(1), msg(2)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [m["seq"] for m in lines(path)] == [1, 2]
    assert inbox.environment([msg(1), msg(2, "latest")]) == {
        "HUBSPOKE_INBOX": str(path),
        "HUBSPOKE_INPUT": "latest",
    }
    assert inbox.deliver([msg(2), msg(3)]) == 1  # 2 was written already
    assert inbox.deliver([msg(3)]) == 0
    assert [m["seq"] for m in lines(path)] == [1, 2, 3]
    inbox.close()
    assert not path.exists()


def test_prepare_replaces_what_an_earlier_attempt_left(tmp_path: Path) -> None:
    path = inbox_path(tmp_path, "agent-2")
    path.write_text('{"seq": 9, "from": "mallory", "text": "stale", "time": ""}\n')
    InboxFile("file", path).prepare([msg(1)])
    assert [m["text"] for m in lines(path)] == ["message 1"]


def test_a_fifo_inbox_waits_for_a_reader_and_keeps_the_order(tmp_path: Path) -> None:
    path = inbox_path(tmp_path, "agent-3")
    inbox = InboxFile("fifo", path)
    inbox.prepare([msg(1)])  # nobody reads yet: kept
    assert stat.S_ISFIFO(path.stat().st_mode)
    assert inbox.deliver([msg(1), msg(2)]) == 1
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert inbox.deliver([msg(3)]) == 1  # a reader now: 1, 2 and 3 go, in order
        data = os.read(reader, 65536)
    finally:
        os.close(reader)
    assert [json.loads(line)["seq"] for line in data.splitlines()] == [1, 2, 3]
    inbox.close()
    assert not path.exists()


def test_none_writes_nothing_but_passes_the_latest_text(tmp_path: Path) -> None:
    path = inbox_path(tmp_path, "agent-4")
    inbox = InboxFile("none", path)
    inbox.prepare([msg(1)])
    assert inbox.deliver([msg(2)]) == 0
    assert not path.exists()
    assert inbox.environment([msg(1, "answer")]) == {"HUBSPOKE_INPUT": "answer"}
    assert inbox.environment([]) == {}


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown inbox kind"):
        InboxFile("pipe", tmp_path / "x")


def test_a_profile_names_its_inbox_kind() -> None:
    assert profile_from_mapping("p", {"argv": ["true"]}).inbox == "file"
    assert profile_from_mapping("p", {"argv": ["true"], "inbox": "fifo"}).inbox == "fifo"
    with pytest.raises(ProfileConfigError, match="key 'inbox' must be one of file, fifo, none"):
        profile_from_mapping("p", {"argv": ["true"], "inbox": "socket"})


def test_an_empty_inbox_is_created_in_place(tmp_path: Path) -> None:
    """A first attempt with no message (issue 13): the empty file is made where the agent
    looks, with no temp file and rename (a stray ``.tmp`` directory cannot stop it), as a new
    owner-only file: an earlier attempt's reader keeps what it had open."""
    path = inbox_path(tmp_path / "inbox", "a1")
    earlier = InboxFile("file", path)
    earlier.prepare([msg(1)])
    with path.open("rb") as held:
        (tmp_path / "inbox" / "a1.inbox.tmp").mkdir()  # the old way wrote through this name
        InboxFile("file", path).prepare([])
        st = os.stat(path)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert path.read_bytes() == b""
        assert held.read() == line_of(msg(1))  # its own inode, untouched
