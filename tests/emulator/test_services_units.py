"""Pure pieces of the service supervisor: line splitting, ordering, subscriptions."""

from __future__ import annotations

import pytest

from sprites_async.emulator._service_logs import MAX_LINE, Lines
from sprites_async.emulator._service_model import (
    SUBSCRIBER_DEPTH,
    ServiceDef,
    Subscription,
    event,
    has_cycle,
    parse_names,
    start_order,
    valid_name,
)


def test_lines_split_across_chunks_and_strip_cr() -> None:
    lines = Lines()
    assert lines.feed(b"hel") == []
    assert lines.feed(b"lo\r\nwor") == ["hello"]
    assert lines.feed(b"ld\n\n") == ["world", ""]
    assert lines.feed(b"tail") == []
    assert lines.flush() == ["tail"]
    assert lines.flush() == []


def test_lines_cap_long_lines_and_replace_bad_utf8() -> None:
    lines = Lines()
    out = lines.feed(b"x" * (MAX_LINE + 10))
    assert out == ["x" * MAX_LINE]
    assert lines.flush() == ["x" * 10]
    assert lines.feed(b"\xffok\n") == ["\ufffdok"]


def defs(**needs: list[str]) -> dict[str, ServiceDef]:
    return {name: ServiceDef(name=name, cmd="true", needs=n) for name, n in needs.items()}


def test_start_order_puts_needs_first() -> None:
    order = start_order(defs(web=["cache", "db"], cache=["db"], db=[], alone=[]))
    assert order.index("db") < order.index("cache") < order.index("web")
    assert sorted(order) == ["alone", "cache", "db", "web"]
    # Unknown names and cycles (never stored) do not loop forever.
    assert start_order(defs(a=["b"], b=["a"], c=["missing"])) == ["b", "a", "c"]


def test_cycle_detection() -> None:
    assert has_cycle("a", defs(a=["b"], b=["c"], c=["a"]))
    assert not has_cycle("a", defs(a=["b", "c"], b=["c"], c=[]))
    assert not has_cycle("a", defs(a=["b"], b=["c"], c=["c2"], c2=[]))


def test_subscription_cuts_off_a_slow_reader() -> None:
    sub = Subscription()
    for i in range(SUBSCRIBER_DEPTH + 5):
        sub.put(event("stdout", data=str(i)))
    assert sub.closed
    items = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert items[-1] is None
    last = items[-2]
    assert last is not None
    assert last["type"] == "error"
    assert len(items) == SUBSCRIBER_DEPTH + 2


def test_definition_wire_and_names() -> None:
    d = ServiceDef(name="web", cmd="python3", args=["-m", "http.server"], http_port=3000)
    assert d.to_wire() == {
        "name": "web",
        "cmd": "python3",
        "args": ["-m", "http.server"],
        "needs": [],
        "http_port": 3000,
    }
    stored = '{"cmd":"x","args":null,"needs":["db"],"http_port":null,"env":{"A":"1"},"dir":"/t"}'
    back = ServiceDef.from_stored("job", stored)
    assert back == ServiceDef(name="job", cmd="x", needs=["db"], env={"A": "1"}, dir="/t")
    assert parse_names(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError):
        parse_names("ab")
    with pytest.raises(ValueError):
        parse_names([1])
    assert valid_name("web-1.v2_x")
    for bad in ("", "../x", "a/b", ".hidden", "x" * 64):
        assert not valid_name(bad), bad
