"""B2 page decode: one real 50-sprite list page, decoded by four decoders in turn.

All four run in one process, interleaved round by round (each round times
every decoder over enough calls for ~10 ms, in a rotating order), so that
noise from other processes hits them alike; each decoder's figure is the
median over rounds, in microseconds per page.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from ._common import SPRITE_PREFIX, Ctx, Metrics, Scenario, expect

NAME = "decode"

DECODERS = ("ours", "official", "msgspec", "json")


def fetch_page(ctx: Ctx) -> bytes:
    """GET one page of 50 sprites, as the clients receive it."""
    request = urllib.request.Request(
        f"{ctx.url}/v1/sprites?max_results=50&prefix={SPRITE_PREFIX}",
        headers={"Authorization": f"Bearer {ctx.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:  # loopback only
        body: bytes = resp.read()
    return body


def decoders() -> dict[str, Callable[[bytes], Any]]:
    """The four ways to turn the page into objects."""
    from sprites._utils import parse_sprite_info
    from sprites.types import SpriteList

    from sprites_async._models import decode_page

    from .impl_raw import page_decoder

    def official(body: bytes) -> Any:
        # What AsyncSpritesClient.list_sprites does with the body (httpx's
        # response.json() is json.loads).
        data = json.loads(body)
        return SpriteList(
            sprites=[parse_sprite_info(item) for item in data.get("sprites", [])],
            has_more=data.get("has_more", False),
            next_continuation_token=data.get("next_continuation_token"),
            running=data.get("running", 0),
            warm=data.get("warm", 0),
            cold=data.get("cold", 0),
        )

    return {
        "ours": decode_page,
        "official": official,
        "msgspec": page_decoder.decode,
        "json": json.loads,
    }


def _time(fn: Callable[[bytes], Any], body: bytes, loops: int) -> float:
    """Seconds per call, with the cyclic GC paused as ``timeit`` does: the
    collections that the garbage of *earlier* calls triggers would otherwise
    be billed to whichever decoder happens to run next."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(loops):
            fn(body)
        return (time.perf_counter() - started) / loops
    finally:
        gc.enable()


def page_decode(ctx: Ctx) -> Metrics:
    """Microseconds per page for each decoder."""
    body = fetch_page(ctx)
    fns = decoders()
    expect(len(fns["ours"](body).sprites) == 50, "the page does not hold 50 sprites")
    loops = {name: max(5, int(0.01 / max(_time(fn, body, 5), 1e-7))) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(ctx.p("rounds")):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            samples[name].append(_time(fns[name], body, loops[name]))
    out: Metrics = {f"{name}_us": statistics.median(s) * 1e6 for name, s in samples.items()}
    # Ratios per round (decoders timed side by side) cancel most of the noise
    # that other processes add; the report uses their median.
    bare = samples["msgspec"]
    for name in ("ours", "official", "json"):
        out[f"{name}_ratio"] = statistics.median(a / b for a, b in zip(samples[name], bare))
    out["page_bytes"] = float(len(body))
    return out


SCENARIOS: dict[str, Scenario] = {"B2d": page_decode}


def unsupported(scenario: str, variant: str) -> str | None:
    """The official SDK's parser is needed for its column."""
    try:
        import sprites  # noqa: F401
    except ImportError:
        return "sprites-py is not installed (pip install sprites-py==0.7.2)"
    return None
