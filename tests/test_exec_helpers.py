"""Checks of the scripted loopback sprite server itself (tests/_fakes.py, the ``fake`` fixture)."""

from __future__ import annotations

from tests._fakes import Conn, FakeSprites, our_tasks


async def test_the_fake_server_records_requests(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.exit_text(0)
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        result = await client.sprite("box").exec("true")
    assert result.exit_code == 0
    ((method, path, query),) = fake.requests
    assert (method, path) == ("GET", "/v1/sprites/box/exec")
    assert query["cmd"] == ["true"]
    assert query["path"] == ["true"]
    assert query["stdin"] == ["false"]
    assert our_tasks() == []
