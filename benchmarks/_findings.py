"""What limits sprites-async where a target is missed: profiling notes.

A note is keyed (scenario, variant, metric key) and shown for a miss on any
loop.

The report prints the note for every target a run missed (a missed target
without a note says so). The full run of 2026-12-04 22:09 UTC met every
target of the first round (issue 9) against the old, looser floor. Round two
(issue 15) tightened the floor and the targets and added B7/B8; the notes below
come from small profiling runs (scale 0.2 and scripts against the benchmark
server), not from a full run.
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
    ("B3", "direct", "median_ms"): (
        "cProfile and counts per exec, 2026-12-07, 1,500 sequential `echo hi` against "
        "`benchmarks._server` (branch h-perf): sprites-async runs 10.4 loop turns, 18 "
        "callbacks, 8 futures, 5 timers and 1 task per exec; raw 7.5, 12, 4.3, 0 and 0. "
        "CPU per exec, ours and raw interleaved in one process (3 x 1,000): 738 vs 624 us "
        "(1.18x; 780 vs 646 before this round's cuts). Where the rest goes: (1) the "
        "handshake runs in the reader task, because a caller cancelled mid-handshake must "
        "still get the socket to stop what the server started: that costs the task and "
        "about 3 loop turns (its start, the caller's wake-up after the 101, the wake-up "
        "at the end); (2) timers raw does not have: the session seam's `Timeouts.wake` "
        "around the handshake, and at the close both `close_now`'s own zero timeout and "
        "aiohttp's `ws_close=2.0` timer (raw passes `ws_close=0`, one timer); (3) the "
        "seam's layers: `_ws_connect` -> `_retrying` -> `once` per handshake and a "
        "wrapper coroutine around every `receive()`. What it would take: in the seam, "
        "`ws_close=0` for exec sockets (then `close_now` needs no timer of its own), "
        "no wake timer when `Timeouts.wake` is None, translating receive errors without "
        "a wrapper coroutine; in the exec package, a handshake that survives its "
        "caller's cancellation without a task (aiohttp has none: an upgrade of our own "
        "on an `asyncio.Protocol`), and reading `exec()`'s frames in the caller's task."
    ),
    ("B3", "control", "median_ms"): (
        "cProfile and counts per exec, 2026-12-07, 3,000 sequential `echo hi` over one "
        "pooled `/control` socket (branch h-perf): loop turns are alike (4.2 ours, 4.5 "
        "raw); CPU per exec interleaved with raw (3 x 2,000) is 229 vs 166 us (1.38x; "
        "255 vs 167 before this round, which removed the idle watcher's task per "
        "command, the receive timeouts after the exit, `asyncio.wait` and the output "
        "queues). What is left is Python work raw does not do: a reader task per "
        "command and the caller's wake-up when it ends; building the command "
        "(`ExecRequest` ~1.8 us, `ExecSession` with its protocol and buffers ~3.4 us, "
        "the output collector ~1.8 us, `ExecResult` ~1.1 us); the layers of `run` -> "
        "`start` -> `open_session` -> `acquire` and `complete` -> `_until_closed`; the "
        "protocol decoding every text frame into typed messages (`session_info`, "
        "`op.ack`, the text exit, `op.complete`), where raw only looks for "
        "`op.complete`; and the seam's wrapper coroutine per `receive()`. What it "
        "would take: one long-lived reader per control socket that feeds the current "
        "operation's protocol and watches the socket while idle (no task per command, "
        "no watcher to cancel), the caller awaiting one future."
    ),
    ("B7", "", "rss_kib_op"): (
        "tracemalloc, 2026-12-07, 1,000 sessions of the B7 scenario against "
        "`benchmarks._server` (branch h-perf), sampled every 20 ms: the Python heap "
        "holds 17.8 KiB per session once all are open (raw 13.8) and peaks at ~21-24 "
        "KiB while the handshakes are in flight (raw 14.6). Per handshake in flight: "
        "the session seam ~2.1 KiB (the `_ws_connect`, `_retrying` and `once` "
        "coroutines, the handshake context token, closures), the exec package ~1.9 KiB "
        "(the `_ws_connect(...)` coroutine with its arguments and query list, the "
        "reader task, the `opened` future and its wait), and aiohttp's request state, "
        "which raw holds too. This round removed the output queues made up front (2.5 "
        "KiB per idle session: now made with a stream's first output), the reader sets "
        "(bit masks now), the flags and futures made before they are needed, the "
        "handshake coroutine kept under every reader, our frames under a waiting "
        "`async for chunk in proc.stdout`, and a frozenset per session: B7 went from "
        "1.65x to 1.42x RSS per session. The garbage collector adds to CPU: ours "
        "allocates ~1.7x raw's tracked objects per session (242 vs 140 young "
        "collections for 1,000 sessions; 201 vs 64 us of GC per session). What it "
        "would take: fewer layers in the seam's handshake (one coroutine, no closures "
        "per socket), and a handshake that needs no task of its own."
    ),
    ("B7", "", "open_s"): (
        "Met in some runs, missed in others at scale 0.2 (1.11-1.23x over four runs "
        "on this shared machine). Opening a session costs what a B3 direct handshake "
        "costs (see that note): the reader task it runs in, the seam's layers and its "
        "wake timer; with 1,000s at once the garbage collector's full collections, "
        "which scan every live session, add to it."
    ),
}
"""Why a target is missed, from a profile: keyed (scenario, variant, metric key)."""

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
