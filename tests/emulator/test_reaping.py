"""Reaping a finished session's leftovers never touches another session.

Linux gives a session id out again once every member of the old session is
gone; the leftover reaper runs after the old leader was waited for, so it can
meet a new session whose leader got the old number. Killing or waiting for
that one would take a live command (and the exit status asyncio waits for).
"""

from __future__ import annotations

import os

import pytest

from sprites_async.emulator import _procs
from sprites_async.emulator._procs import ProcInfo, reap_members


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    calls: dict[str, list[int]] = {"kill": [], "waitpid": []}
    monkeypatch.setattr(os, "kill", lambda pid, sig: calls["kill"].append(pid))
    monkeypatch.setattr(os, "waitpid", lambda pid, opts: calls["waitpid"].append(pid) or (0, 0))
    return calls


def _table(monkeypatch: pytest.MonkeyPatch, *rows: ProcInfo) -> None:
    monkeypatch.setattr(_procs, "proc_table", lambda: {row.pid: row for row in rows})


def test_leftovers_of_the_old_session_are_killed_and_reaped(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, list[int]]
) -> None:
    me = os.getpid()
    _table(
        monkeypatch,
        ProcInfo(501, "S", 1, 500, 500),  # orphan still running
        ProcInfo(502, "Z", me, 500, 500),  # our zombie
        ProcInfo(503, "Z", 77, 500, 500),  # someone else's zombie
        ProcInfo(601, "S", me, 600, 600),  # another session: not asked for
    )
    assert reap_members([500], gone={500}) == 2
    assert recorded == {"kill": [501], "waitpid": [502]}


def test_a_new_session_with_the_old_number_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, list[int]]
) -> None:
    me = os.getpid()
    _table(
        monkeypatch,
        ProcInfo(500, "Z", me, 500, 500),  # the new leader (asyncio waits for it)
        ProcInfo(504, "S", 500, 500, 500),  # a member of the new session
    )
    assert reap_members([500], gone={500}) == 0
    assert recorded == {"kill": [], "waitpid": []}


def test_an_inner_session_is_reaped_leader_included_then_never_again(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, list[int]]
) -> None:
    # A sandbox's inner session (led by bubblewrap's PID-1 child, now ours).
    me = os.getpid()
    gone: set[int] = {499}
    _table(monkeypatch, ProcInfo(500, "Z", me, 500, 500), ProcInfo(501, "S", me, 500, 500))
    assert reap_members([499, 500], gone=gone) == 1
    assert recorded == {"kill": [501], "waitpid": [500]}
    assert gone == {499, 500}
    # Later the number 500 leads someone else's new session: left alone.
    _table(monkeypatch, ProcInfo(500, "S", me, 500, 500))
    assert reap_members([499, 500], gone=gone) == 0
    assert recorded == {"kill": [501], "waitpid": [500]}
