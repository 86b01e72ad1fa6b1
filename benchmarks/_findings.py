"""What limits sprites-async where a target is missed: profiling notes.

Written by hand from profiles of the SDK as it stood on 2026-11-23, 20:00-21:00
UTC (cProfile and tracemalloc against the benchmark server; CPU figures are
the CPU column of the full run started 20:51 UTC). The report prints a note
under every target that the run missed; a missed target without a note says
so. Update these when the SDK changes.
"""

from __future__ import annotations

FINDINGS: dict[tuple[str, str, str], str] = {
    ("B1", "", "rps"): (
        "The server (one Python process) is the bottleneck and ratios swing with load; "
        "the client side costs ~300 µs CPU per request for sprites-async vs ~250 µs raw. "
        "The gap: the session carries a `TraceConfig` (`_session.py` `_observe_handshake`, "
        "needed only for WebSocket upgrades), so aiohttp dispatches six trace signals on "
        "every plain request (`aiohttp/tracing.py` `send_request_start`, "
        "`send_request_headers`, `send_connection_reuseconn`, `send_response_chunk_received`, "
        "`send_request_end`: 0.39 s of 5.4 s under cProfile for 5,000 requests), plus "
        "`quote_segment` and `check_name` per call."
    ),
    ("B2", "", "wall"): (
        "Server-bound: the client uses 0.15 to 0.27 s CPU of a 0.8 to 1.6 s walk. 300 interleaved "
        "single-page requests in one process gave the same median latency (7.2 ms "
        "sprites-async, 7.3 ms raw), so a gap between separate runs is load drift on a "
        "shared 2-core machine, not client cost."
    ),
    ("B3", "direct", "median_ms"): (
        "CPU per exec is ~1.8 ms vs ~1.2 ms raw (B3 CPU column: 0.37 s vs 0.24 s for 200 execs "
        "in the 20:51 run). cProfile of 1,000 "
        "direct execs: ~1,850 Python calls and ~21 event-loop iterations per exec vs ~875 "
        "and ~9 raw. Five tasks per exec (`create_task` 5,003 per 1,000 execs): the reader "
        "(`_exec.py` `_begin`), the pinger (`_ping_loop`), the shield task of `_shielded` "
        "around `aclose`, and `asyncio.wait_for(ws.close(), ...)` in `_close_ws` (a task on "
        "Python 3.11); the upgrade also runs under an `asyncio.timeout` and the session's "
        "trace hook (`_session.py` `_ws_connect`, `_observe_handshake`), and every frame "
        "under another (`receive(timeout=...)` in `_read_loop`)."
    ),
    ("B4", "direct", "wall"): (
        "The same per-exec CPU as B3 direct, times 500 at once: 0.95 s CPU vs 0.56 s raw "
        "(≈1.9 vs 1.1 ms per exec, 20:51 run); with the server on the other core the "
        "client's CPU shows in the wall time."
    ),
    ("B3", "control", "median_ms"): (
        "CPU per exec over a pooled control socket is ~0.7 ms vs ~0.37 ms raw (0.137 s vs "
        "0.074 s for 200 execs in the 20:51 run). cProfile of "
        "2,000 execs: 832 Python calls per exec vs 134 raw and ~11 event-loop iterations vs "
        "~4. Per exec it starts four tasks: the reader (`_exec.py` `_begin` -> `_read_loop`), "
        "a pinger (`_ping_loop`, 15 s interval, for a 1 ms command), a shield task "
        "(`_shielded` around `aclose`) and the pool's idle watcher re-armed on every "
        "check-in (`_control.py` `_watch_idle`, itself a `receive(timeout=...)`); and "
        "`_read_loop` calls `ws.receive(timeout=...)`, which opens an `asyncio.timeout` for "
        "each of the ~7 frames of an exec (enter+exit ≈ two bare loop iterations)."
    ),
    ("B4", "direct", "rss_growth_mb"): (
        "tracemalloc at the peak of 500 concurrent execs: 14.2 MiB traced vs 7.9 MiB raw. "
        "`_exec.py` allocations 4.0 MiB (≈8 KiB per exec: `ExecSession.__init__` state, two "
        "output deques, the `OutputStream` pair, the collector), three `asyncio.Event` per "
        "session (1.1 MiB; each owns a deque), and two extra tasks per exec (reader and "
        "pinger: tasks 0.7 MiB, their loop handles 1.4 MiB vs 0.5 MiB raw)."
    ),
    ("B4", "control", "rss_growth_mb"): (
        "Same per-exec state as the direct variant (ExecSession, three Events, reader and "
        "pinger tasks); the control socket itself costs what raw's does."
    ),
    ("B5", "", "mbps"): (
        "~20 µs more CPU per 64 KiB frame (0.22 to 0.24 s vs 0.14 to 0.16 s for 4,096 frames) and "
        "more wall than CPU explains: every frame crosses from the reader task to the "
        "consumer through a deque and an `asyncio.Event` (`_exec.py` `_emit` -> `_wake` -> "
        "`_next_output`: a task switch per frame, ≈ two loop iterations), `_read_loop` wraps "
        "each `ws.receive` in an `asyncio.timeout`, and `_frames.parse_frame` copies each "
        "payload (`frame[1:]`, ~8 µs per 64 KiB). Raw reads in the caller's own task and "
        "never copies."
    ),
    ("B6", "c50", "eps"): (
        "≈3.9 µs CPU per event vs 0.95 µs raw (0.077 s vs 0.019 s for 20,000 events in the "
        "20:51 run). `_streams.py` `NDJSONDecoder.feed` splits "
        "lines in Python (`bytearray.find`, `_line`, the `_checkpoints.py` `decode` wrapper "
        "and two `isinstance` per line) where one `msgspec.json.Decoder.decode_lines()` call "
        "per chunk would do (per-line fallback only on error); each event then passes two "
        "async `__anext__` levels (`EventOperation` -> `NDJSONStream`) and "
        "`_Tracker.on_event` (which also keeps every event in a list)."
    ),
    ("B6", "c1", "eps"): (
        "As for 50 events per chunk; with one event per chunk the network read dominates "
        "and the per-event Python work matters less."
    ),
}

OFFICIAL_NOTES: dict[str, str] = {
    "B1": (
        "Official SDK: with 100 threads sharing one `httpx.Client`, the sync client loses "
        "a request or two per 5,000 to `[Errno 9] Bad file descriptor`; a run with any "
        "failed request counts as failed. The async client spends ~5.5 ms CPU per request "
        "here (CPU column); not profiled."
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
