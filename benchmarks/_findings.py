"""What limits sprites-async where a target is missed: profiling notes.

A note is keyed (scenario, variant, metric key) and shown for a miss on any
loop.

The report prints the note for every target a run missed (a missed target
without a note says so). The full run of 2026-12-04 22:09 UTC met every
target of the first round (issue 9) against the old, looser floor. Round two
(issue 15) tightened the floor and the targets and added B7/B8; the notes below
come from small profiling runs (scale 0.2-0.25, scripts against the benchmark
server, instruction counts under valgrind), not from a full run.
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
        "Instruction counts (valgrind, the difference between 250 and 50 sequential `echo hi`, "
        "direct), 2026-12-08: 1.495M instructions per exec against raw's 1.07-1.09M (1.40x; "
        "1.52x before this round, 1.56x in the SDK before the redesign); 1,179 Python calls per "
        "exec against raw's 760. The same socket loop through the session seam with no exec "
        "package costs 1.195M, so the seam is about a quarter of the gap and the exec package "
        "the rest. This round cut the seam's handshake from 9.5-12 to 4.3-4.5 us of CPU (one "
        "coroutine per attempt, shared wake timers, no closure per socket, no close wait) and "
        "the exec package's reference cycles (a finished exec leaves 7 objects for the garbage "
        "collector instead of 75; GC time per exec 17 -> 2.3 us) and its timer per command. "
        "What is left: the reader task (a caller cancelled mid-handshake must still get the "
        "socket to stop what the server started, so the handshake cannot run in the caller's "
        "task), the protocol's typed decoding of every frame, the session and result objects. "
        "What it would take: an upgrade of our own on an `asyncio.Protocol` that survives the "
        "caller's cancellation without a task, and reading `exec()`'s frames in the caller's "
        "task."
    ),
    ("B3", "control", "median_ms"): (
        "cProfile and counts, 2026-12-08, sequential `echo hi` over one pooled `/control` "
        "socket: CPU per exec 241-247 us against raw's 152 (1.6x). The pool itself costs 2.6 us "
        "per acquire and release. The rest is the exec package's per-command work: a reader task "
        "per command and the caller's wake-up when it ends, two timers, the protocol decoding "
        "every text frame into typed messages (`session_info`, `op.ack`, the text exit, "
        "`op.complete`; raw looks only for `op.complete`), the session, output collector and "
        "result objects. What it would take: one long-lived reader per control socket that "
        "feeds the current command's protocol and watches the socket while it is idle (no task "
        "per command, no idle watcher per pooled socket), the caller awaiting one future."
    ),
    ("B4", "control", "wall"): (
        "Same per-command work as the B3 control note (a reader task and two timers per "
        "command, typed decoding of every control frame); with 500 commands at once the "
        "500 first dials also wait for the one probe dial that tells whether `/control` is "
        "served (kept on purpose: a hanging `/control` then holds one socket, not 500). CPU "
        "per exec fell this round (1.37x -> 1.21x raw, pooled medians of 8 repetitions); the "
        "wall ratio moves between 0.9x and 1.5x from one repetition to the next on this "
        "machine."
    ),
    ("B4", "direct", "rss_growth_mb"): (
        "tracemalloc, 2026-12-08: the Python heap per exec while 500 handshakes are in flight "
        "is 21.9 KiB against raw's 14.8 (24.4 in the SDK before the redesign). Per live exec: "
        "the reader task with its registration ~900 B, its `_read_loop` frame 336 B, the "
        "session, protocol and buffers ~700 B, the `WebSocket` wrapper 80 B, the per-request "
        "`Authorization` header dicts ~170 B (kept per request on purpose: as a session "
        "default header aiohttp would copy it into a proxy's CONNECT request). The rest is "
        "aiohttp's, which raw holds too. What it would take: no reader task per exec (see the "
        "B3 direct note)."
    ),
    ("B4", "control", "rss_growth_mb"): (
        "As for direct (see that note): per command a reader task, its frame and the "
        "session, protocol and buffers that raw does not keep."
    ),
    ("B4s", "direct", "wall"): (
        "100 commands on one sprite at once, direct: CPU per exec is 1.17-1.19x raw (pooled "
        "medians, 2026-12-08; 1.33x before the redesign). The wall ratio of a 100-command burst "
        "is 50-60 ms against the machine's scheduling noise: 0.86-1.28x across 8 repetitions. "
        "Where the CPU goes: as in the B3 direct note."
    ),
    ("B4s", "control", "wall"): (
        "Profile, 2026-12-08, 20 rounds of 100 commands on one sprite over `/control`: 100 "
        "sockets are dialled by the SDK and by raw alike, but the SDK's other 99 dials start "
        "only when the probe dial has answered (4-5 ms, ~8% of a 57 ms round; kept on "
        "purpose, see the B4 control note); the pool keeps at most 20 idle sockets and closes "
        "the rest as they are checked in (0.88 closes per command inside the timed region, "
        "~10% of the CPU; with no cap the SDK uses 445 us per command instead of 490-505). "
        "Tasks per command 2.4 (raw 1): the exec reader and idle watchers; timers: the probe "
        "timeout and the exec package's two. This round removed a task and a timer per closed "
        "socket and the idle watchers' receive timeouts (one pool timer now). What it would "
        "take: the long-lived reader of the B3 control note, and closing surplus idle sockets "
        "after a short delay instead of at check-in (the next burst would re-use them)."
    ),
    ("B6", "c50", "eps"): (
        "2026-12-08: met when the SDK reads the stream with its heap in the same state as raw. "
        "With `SSL_CERT_FILE`/`SSL_CERT_DIR` set, each client used to load the CA bundle (also "
        "for plain-HTTP URLs), and the heap left behind made every large read (120-300 KB "
        "chunks when the reader falls behind) page-fault: ~840 minor faults per 20,000-event "
        "stream against 1, and 0.53 against 0.38 us of CPU per event. A plain-HTTP client no "
        "longer loads a bundle, and the decoder decodes each read's lines in place. Left: one "
        "async-generator step per event (~100 ns against raw's 34 ns plain loop)."
    ),
    ("B7", "", "rss_kib_op"): (
        "tracemalloc and gc counts, 2026-12-08, 1,000-2,000 live sessions against "
        "`benchmarks._server`: the Python heap holds 17.96 KiB per live session against raw's "
        "13.78, and 85.9 objects tracked by the garbage collector against 52.8 (94.7 before "
        "this round). Per session: the reader task with its registration ~900 B, its "
        "`_read_loop` frame 336 B, the session, protocol and buffers ~700 B, the `WebSocket` "
        "wrapper 80 B, the per-request `Authorization` header dicts ~170 B. This round: the "
        "seam keeps 90 B per open socket instead of 818 (no context copy, no closure), the "
        "protocol holds no bound method of its session, output streams are made on access. "
        "What it would take: no reader task per session (the B3 direct note), or a reader "
        "shared by many sessions."
    ),
    ("B7", "", "open_s"): (
        "Met in some runs, missed in others (1.11-1.23x at scale 0.2-0.25). Opening a "
        "session costs what a B3 direct handshake costs (see that note); with thousands at "
        "once the garbage collector's full collections, which scan every live session, add "
        "to it."
    ),
    ("B8", "control", "wall"): (
        "Profile, 2026-12-08 (callgrind, 200 sprites): 3.12M instructions per exec (3.41M "
        "before this round). Each of the 1,000 sprites gets its own control socket (its first "
        "dial is also the probe of its `/control` support), then an idle-watcher task per "
        "pooled socket until the client closes; raw keeps its sockets without watching them. "
        "What it would take: the long-lived reader of the B3 control note (it is also the idle "
        "watcher)."
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
