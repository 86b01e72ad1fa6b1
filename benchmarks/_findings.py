"""What limits sprites-async where a target is missed: profiling notes.

A note is keyed (scenario, variant, metric key) and shown for a miss on any
loop.

The report prints the note for every target a run missed (a missed target
without a note says so). The full run of 2026-12-04 22:09 UTC met every
target of the first round (issue 9) against the old, looser floor. Round two
(issue 15) tightened the floor and the targets and added B7/B8; the one note
so far (B7 memory) comes from a small profiling run, not from a full run.
The notes written for the misses of the 2026-11-23 run (B3, B4 memory,
B6 c50: a task per exec for the reader, pinger, shield and pool watcher, a
timeout around every frame, an instance dict and three ``asyncio.Event`` per
session, a coroutine per progress event) described code that has since
changed; they are in this file's git history. Write new ones from profiles
(cProfile, tracemalloc against ``python -m benchmarks._server``) when a target
is missed again.
"""

from __future__ import annotations

FINDINGS: dict[tuple[str, str, str], str] = {
    ("B7", "", "rss_kib_op"): (
        "tracemalloc, 2026-12-07, 1,000 sessions against `benchmarks._server` (SDK at "
        "branch h-bench, 5272c47): the Python heap at its peak holds 23.1 KiB per session "
        "for sprites-async and 14.2 KiB for raw; aiohttp's own objects (protocol, "
        "response, reader, writer) are alike on both sides. The difference, ~9 KiB a "
        "session: `ExecSession.__init__` allocates its output queues up front (a dict "
        "with two `deque`s for stdout/stderr plus a `deque(maxlen=...)` for port events: "
        "~2.4 KiB while empty), a reader task per session (its task object and "
        "coroutine frame), the waiter future, set and callbacks of the `asyncio.wait` "
        "in `wait()`, the futures and flags of `start()` (`_finished`, `_Flag`s), timer "
        "handles (the liveness pinger), and a `Sprite` handle per session (0.5 KiB, "
        "because the scenario calls `client.sprite(name)` for each). Creating the "
        "queues on first output is the largest single saving in sight; not tried."
    ),
}

OFFICIAL_NOTES: dict[str, str] = {
    "B1": (
        "Official SDK: with 100 threads sharing one `httpx.Client`, the sync client loses "
        "a request or two per 5,000 to `[Errno 9] Bad file descriptor`; a run with any "
        "failed request counts as failed. The async client spends ~5.5 ms CPU per request "
        "here (the whole process's CPU time, measured before CPU per request was "
        "reported); not profiled."
    ),
    "B3": (
        "Official SDK, control mode (from reading sprites-py 0.7.2): it sends a stdin EOF "
        "frame after every `op.start`, even without stdin (`websocket.py` "
        "`run_ws_command_via_control` -> `op.send_eof()`). When the command has already "
        "finished, the server answers that stray frame with `op.error` `op.not_active` "
        "(protocol reference 5.7), which sprites-py attributes to the next op on the "
        "socket (`control.py` `_handle_control_message`) and ends without an exit status. "
        "It is a race, so some runs pass."
    ),
    "B4s": (
        "Official SDK, control mode: with 100 concurrent commands on one sprite neither "
        "client finished within the time limit; the run was killed and not repeated "
        "(not profiled)."
    ),
    "B5": (
        "Official SDK: it keeps every stdout byte in its own buffer even when a stdout "
        "sink is given (`websocket.py` `_handle_message` extends `_stdout_buffer`), hence "
        "its ~288 MiB peak for 256 MiB of output."
    ),
    "B6": (
        "Official SDK: `create_checkpoint` reads the whole response before it returns "
        "(`async_sprite.py`: `response.text`; `checkpoint.py` likewise), so its first "
        "event arrives with the last."
    ),
}
"""Why the official SDK fails or lags where it does; printed under each scenario."""
