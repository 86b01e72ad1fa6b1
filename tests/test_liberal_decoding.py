"""Decoding is liberal (section 12, item 0): nulls, odd fields, unknown keys, lost entries.

Every answer here is one the official SDKs accept; the SDK must too, and
must never silently drop a list entry it cannot fully read.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from sprites_async import ProtocolError, SpritesClient, StreamError
from sprites_async import _frames as frames
from sprites_async._exec import _decode_kill
from sprites_async._models import decode_page, decode_sprite
from sprites_async.fleet import cleanup
from tests._mock import BASE, requests_to, sprite_json, url

SPRITE = "/v1/sprites/box"

# ------------------------------------------------------------ null arrays


def test_null_labels_are_an_empty_list_and_unknown_keys_stay_reachable() -> None:
    info = decode_sprite(b'{"name":"a","labels":null,"brand_new":{"x":1},"status":"hibernating"}')
    assert info.labels == []
    assert info.status == "hibernating"  # unknown enum strings are kept
    assert info.raw == {
        "name": "a",
        "labels": None,
        "brand_new": {"x": 1},
        "status": "hibernating",
    }


def test_an_odd_label_is_left_out_alone() -> None:
    info = decode_sprite(b'{"name":"a","labels":["prod",{"k":"v"},7,null]}')
    assert info.labels == ["prod", "7"]  # delete_many(labels=["prod"]) still finds it
    assert info.raw["labels"][1] == {"k": "v"}


def test_a_null_page_of_sprites_is_empty() -> None:
    page = decode_page(b'{"sprites":null,"has_more":true,"next_continuation_token":null}')
    assert page.sprites == [] and page.next_token is None


def test_raw_of_page_entries_is_each_entrys_own_object() -> None:
    body = json.dumps(
        {"sprites": [sprite_json("a", extra_a=1), sprite_json("b", extra_b=2)], "org_x": 3}
    ).encode()
    page = decode_page(body)
    a, b = page.sprites
    assert (a.raw["extra_a"], b.raw["extra_b"]) == (1, 2)
    assert "extra_b" not in a.raw and a.raw is a.raw
    assert page.raw["org_x"] == 3


async def test_sprites_get_and_create_accept_null_labels(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.get(url(SPRITE), payload=sprite_json("box", labels=None))
    mock.post(url("/v1/sprites"), status=201, payload=sprite_json("box", labels=None))
    assert (await client.sprites.get("box")).labels == []
    assert (await client.sprites.create("box")).labels == []


async def test_services_with_null_args_and_needs(client: SpritesClient, mock: aioresponses) -> None:
    svc = {"name": "web", "cmd": "python3", "args": None, "needs": None, "later": True}
    mock.get(url(SPRITE + "/services"), payload=[svc, {**svc, "name": "db", "args": ["-x"]}])
    mock.get(url(SPRITE + "/services"), payload={"services": [svc]})
    mock.get(url(SPRITE + "/services"), payload={"services": None})
    mock.get(url(SPRITE + "/services/web"), payload=svc)
    services = client.sprite("box").services
    listed = await services.list()
    assert [(s.name, s.args, s.needs) for s in listed] == [("web", [], []), ("db", ["-x"], [])]
    assert listed[0].raw["later"] is True
    assert [s.args for s in await services.list()] == [[]]
    assert await services.list() == []
    got = await services.get("web")
    assert (got.args, got.needs, got.raw["later"]) == ([], [], True)


async def test_checkpoints_fs_and_policy_accept_nulls(
    client: SpritesClient, mock: aioresponses
) -> None:
    sprite = client.sprite("box")
    mock.get(url(SPRITE + "/checkpoints"), payload=[{"id": "v1", "history": None, "new": 1}])
    mock.get(url(SPRITE + "/checkpoints"), body=b"null", content_type="application/json")
    (cp,) = await sprite.checkpoints.list()
    assert (cp.id, cp.history, cp.raw["new"]) == ("v1", [], 1)
    assert await sprite.checkpoints.list() == []

    mock.get(url(SPRITE + "/fs/list"), payload={"path": "/home/sprite", "entries": None})
    assert await (sprite.fs() / "dir").scandir() == []
    mock.post(url(SPRITE + "/fs/copy"), payload={"copied": None, "count": 0, "totalBytes": 0})
    result = await (sprite.fs() / "a").copy(sprite.fs() / "b")
    assert result.copied == []

    mock.get(url(SPRITE + "/policy/network"), payload={"rules": None, "mode": "strict"})
    policy = await sprite.policy.get()
    assert policy.rules == [] and policy.raw == {"rules": None, "mode": "strict"}


async def test_fs_entries_keep_their_raw_object(client: SpritesClient, mock: aioresponses) -> None:
    entry = {"name": "a", "path": "/home/sprite/a", "type": "file", "size": 1, "xattr": "yes"}
    odd = {"name": "b", "path": "/home/sprite/b", "type": "fifo", "size": "big", "mode": "644"}
    mock.get(url(SPRITE + "/fs/list"), payload={"path": "/home/sprite", "entries": [entry, odd]})
    a, b = await (client.sprite("box").fs() / "dir").scandir()
    assert a.raw["xattr"] == "yes"
    # An unreadable size is lost alone; the unknown type is "other".
    assert (b.name, b.type, b.size, b.mode, b.raw["size"]) == ("b", "other", None, 0o644, "big")


# -------------------------------------------------- entries are never dropped


async def test_an_odd_sprite_is_kept_and_delete_many_and_cleanup_see_it(
    client: SpritesClient, mock: aioresponses
) -> None:
    odd = sprite_json(
        "ci-odd", labels=None, created_at="yesterday", status=3, url_settings="public"
    )
    page = {"sprites": [sprite_json("ci-fine"), odd], "has_more": False}
    mock.get(url("/v1/sprites"), payload=page, repeat=True)
    for name in ("ci-fine", "ci-odd"):
        mock.delete(url("/v1/sprites/" + name), status=204, repeat=True)

    listed = (await client.sprites.list(prefix="ci-")).sprites
    assert [s.name for s in listed] == ["ci-fine", "ci-odd"]
    kept = listed[1]
    assert (kept.labels, kept.created_at, kept.status, kept.url_settings) == ([], None, "3", None)
    assert kept.raw["url_settings"] == "public"

    report = await client.sprites.delete_many(prefix="ci-")
    assert sorted(report.deleted) == ["ci-fine", "ci-odd"]
    report = await cleanup(client, prefix="ci-")
    assert sorted(report.deleted) == ["ci-fine", "ci-odd"]
    assert len(requests_to(mock, "DELETE", "/v1/sprites/ci-odd")) == 2


@pytest.mark.parametrize(
    "entry", [{"status": "warm"}, {"name": None}, {"name": {"first": "x"}}, "ci-b", None]
)
async def test_an_entry_without_a_name_fails_the_page_naming_it(
    client: SpritesClient, mock: aioresponses, entry: Any
) -> None:
    page = {"sprites": [sprite_json("ci-a"), entry], "has_more": False}
    mock.get(url("/v1/sprites"), payload=page, repeat=True)
    with pytest.raises(ProtocolError, match=r"sprites\[1\]") as caught:
        await client.sprites.list()
    assert caught.value.operation == "list sprites"
    with pytest.raises(ProtocolError):
        await client.sprites.delete_many(prefix="ci-")  # deletes nothing on a partial view
    assert not requests_to(mock, "DELETE", "/v1/sprites/ci-a")


async def test_an_unreadable_service_or_checkpoint_is_named(
    client: SpritesClient, mock: aioresponses
) -> None:
    sprite = client.sprite("box")
    mock.get(url(SPRITE + "/services"), payload=[{"name": "web", "cmd": "x"}, {"cmd": "y"}])
    with pytest.raises(ProtocolError, match=r"services\[1\]"):
        await sprite.services.list()
    mock.get(url(SPRITE + "/checkpoints"), payload=[{"id": "v0"}, {"id": "v1"}, {"comment": "c"}])
    with pytest.raises(ProtocolError, match=r"checkpoints\[2\]"):
        await sprite.checkpoints.list()


# ----------------------------------------------------------- notifications


def test_session_info_is_read_field_by_field() -> None:
    msg = frames.decode_message(
        '{"type":"session_info","session_id":1847,"command":{"path":"bash"},'
        '"created":"1767609000","cols":"120","rows":"forty","is_owner":1,"tty":"true"}'
    )
    assert msg == frames.SessionInfoMessage(
        session_id="1847", command=None, created=1767609000.0, cols=120, rows=None,
        is_owner=True, tty=True,
    )  # fmt: skip
    garbage = frames.decode_message('{"type":"session_info","session_id":[1],"tty":"maybe"}')
    assert garbage == frames.SessionInfoMessage()


def test_control_envelopes_are_read_field_by_field() -> None:
    env = frames.decode_envelope('control:{"type":"op.complete","id":7,"op":null,"args":[1]}')
    assert env == frames.Envelope(type="op.complete", id="7", op="", args={})
    assert frames.decode_envelope("control:[1]") == frames.Envelope(type="")


def test_port_events_are_read_field_by_field() -> None:
    msg = frames.decode_message('{"type":"port_opened","port":"8080","address":null,"pid":"12"}')
    assert msg == frames.PortOpenedMessage(port=8080, address="", pid=12)
    msg = frames.decode_message('{"type":"port_closed","port":8080.0,"address":1,"pid":"x"}')
    assert msg == frames.PortClosedMessage(port=8080, address="1", pid=None)


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b'{"type":"signal","message":"Signaling SIGTERM","pid":12,"signal":"SIGTERM"}',
         "Signaling SIGTERM"),
        (b'{"type":"signal","data":"Signaling SIGTERM","pid":"12","signal":15}',
         "Signaling SIGTERM"),
        (b'{"type":"error","error":"no such process"}', "no such process"),
        (b'{"type":"exited","message":null,"data":"Process exited"}', "Process exited"),
        (b'{"type":"exited","message":7}', "7"),
    ],
)  # fmt: skip
def test_kill_events_take_their_text_from_message_data_or_error(line: bytes, text: str) -> None:
    assert _decode_kill(line).message == text


def test_kill_event_fields_of_odd_types_are_kept_or_lost_alone() -> None:
    event = _decode_kill(b'{"type":"signal","data":"x","pid":"12","signal":15,"exit_code":"1"}')
    assert (event.pid, event.signal, event.exit_code) == (12, "15", 1)
    with pytest.raises(msgspec.DecodeError):
        _decode_kill(b'{"message":"no type"}')  # skipped as a malformed line


async def test_a_kill_error_spelt_error_fails_with_its_text(
    client: SpritesClient, mock: aioresponses
) -> None:
    body = b'{"type":"signal","data":"Signaling"}\n{"type":"error","error":"permission denied"}\n'
    mock.post(url(SPRITE + "/exec/12/kill"), body=body, content_type="application/x-ndjson")
    with pytest.raises(StreamError, match="permission denied"):
        await client.sprite("box").sessions.kill("12")


# ----------------------------------------------------------- clear_labels


async def test_update_with_no_labels_sends_clear_labels(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.put(url(SPRITE), payload=sprite_json("box"), repeat=True)
    await client.sprites.update("box", labels=[])
    await client.sprite("box").update(labels=(), url_auth="public")
    await client.sprites.update("box", labels=["ci"])
    bodies = [json.loads(c.kwargs["data"]) for c in requests_to(mock, "PUT", SPRITE)]
    assert bodies == [
        {"clear_labels": True},
        {"url_settings": {"auth": "public"}, "clear_labels": True},
        {"labels": ["ci"]},
    ]


# ------------------------------------------------------------------- stat


def _listing(mock: aioresponses, answers: dict[str, Any]) -> list[str]:
    """Answer /fs/list by ``path``; return the listed paths in request order."""
    seen: list[str] = []

    def answer(u: URL, **kwargs: Any) -> CallbackResult:
        path = dict(kwargs["params"])["path"]
        seen.append(path)
        found = answers.get(path)
        if found is None:
            return CallbackResult(
                status=404, payload={"error": "no such file", "code": "ENOENT", "path": path}
            )
        return CallbackResult(payload={"path": path, "entries": found})

    mock.get(re.compile(re.escape(BASE + SPRITE + "/fs/list") + ".*"), callback=answer, repeat=True)
    return seen


def _e(path: str, kind: str) -> dict[str, Any]:
    return {"name": path.rsplit("/", 1)[-1], "path": path, "type": kind, "size": 1, "mode": "644"}


async def test_stat_of_a_file_lists_only_the_file(
    client: SpritesClient, mock: aioresponses
) -> None:
    seen = _listing(mock, {"/home/sprite/a.txt": [_e("/home/sprite/a.txt", "file")]})
    info = await (client.sprite("box").fs() / "a.txt").stat()
    assert (info.name, info.type) == ("a.txt", "file")
    assert seen == ["/home/sprite/a.txt"]  # the parent is never listed for a file


async def test_stat_of_a_directory_lists_it_then_its_parent(
    client: SpritesClient, mock: aioresponses
) -> None:
    seen = _listing(
        mock,
        {
            "/home/sprite/d": [_e("/home/sprite/d/only-child", "file")],
            "/home/sprite": [_e("/home/sprite/a.txt", "file"), _e("/home/sprite/d", "directory")],
            "/home/sprite/empty": [],
            "/": [_e("/home", "directory")],
        },
    )
    fs = client.sprite("box").fs()
    info = await (fs / "d").stat()
    assert (info.name, info.type, info.size) == ("d", "directory", 1)
    assert seen == ["/home/sprite/d", "/home/sprite"]
    # A directory its parent's listing leaves out (a capped listing) is still a directory.
    seen.clear()
    info = await (fs / "empty").stat()
    assert (info.name, info.path, info.type) == ("empty", "/home/sprite/empty", "directory")
    assert seen == ["/home/sprite/empty", "/home/sprite"]
    seen.clear()
    assert (await (fs / "/").stat()).is_dir
    assert seen == ["/"]
    with pytest.raises(FileNotFoundError):
        await (fs / "missing").stat()


# ------------------------------------------------------------ stream events


def test_stream_events_of_a_known_type_are_read_field_by_field() -> None:
    from sprites_async import _checkpoints, _ports, _services

    ports = _ports._decode_port_event(b'{"type":"port_list","ports":null}')
    assert isinstance(ports, _ports.PortList) and ports.ports == []
    ports = _ports._decode_port_event(
        b'{"type":"port_list","ports":[{"port":"80","address":null,"pid":"x"}]}'
    )
    assert ports.ports == [_ports.PortInfo(port=80)]
    done = _services._decode_event(b'{"type":"complete","log_files":null,"timestamp":"17"}')
    assert isinstance(done, _services.ServiceComplete)
    assert (done.log_files, done.timestamp) == ({}, 17)
    info = _checkpoints._decode_event(b'{"type":"info","data":"Creating","time":"soon"}')
    assert isinstance(info, _checkpoints.CheckpointInfo) and info.data == "Creating"
    with pytest.raises(msgspec.DecodeError):
        _ports._decode_port_event(b'{"type":"port_opened","port":null}')  # nothing left to say
