"""Bounded load/soak tests: many commands under injected drops, many cancellations,
and a large stream through a slow reader.

Sizes come from ``SPRITES_SOAK_SCALE``: unset or ``small`` (the default test run:
300 commands, 100 cancellations, 64 MiB), ``full`` (``nox -s soak``: 10,000
commands, 1,000 cancellations, 1 GiB), or a number (a fraction of ``full``).

``SPRITES_SOAK_QUIRKS`` lists the emulator quirk profiles to run every test
under, comma-separated (``none``: the emulator as written; ``real-world`` or any
name ``Emulator(quirks=...)`` takes; ``+`` joins several into one run, as in
``null-arrays+exec-wsexec``). Unset: ``none`` and ``real-world``, the latter
with 50 cancellations and 16 MiB in the default run.

Each test prints one ``SOAK ...`` summary line and, when ``SPRITES_SOAK_REPORT``
names a file, merges its figures into that JSON file.

Randomness is seeded (``SPRITES_SOAK_SEED``, default 20260401); what is seeded
is the choice of commands, delays and fault windows, not the interleaving of
the event loop, so two runs inject the same kinds of faults, not the same
faults at the same frames.

What counts as wrong (asserted zero): an untyped error; a ``ProtocolError`` or
``StreamError`` (the emulator only ever sends well-formed frames, so either is
an SDK bug, not a fault it may report); a wrong exit code or output; partial
output carried by an ``ExitStatusUnknownError`` that is not a prefix of the
command's true output; a command started twice on the server (counted at the
emulator's session creation, and by the real processes themselves in a ledger
file); a hang; a zombie; a process, task, socket or descriptor left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sprites_async import (
    CommandTimeoutError,
    ExitStatusUnknownError,
    ProtocolError,
    SpritesClient,
    SpritesConnectionError,
    SpritesError,
    StreamError,
)
from sprites_async._config import ControlOptions, ExecSettings
from sprites_async._control import pool_for
from sprites_async.emulator import Emulator, _faults, _wsio, resolve_quirks
from sprites_async.emulator._procs import ProcSpec, proc_table, session_members
from sprites_async.emulator._quirks import CONTROL_REFUSALS
from sprites_async.emulator._sessions import SessionManager
from sprites_async.emulator._sprites import insert_sprite, new_record
from sprites_async.emulator._state import EmulatorState
from sprites_async.emulator._wsio import FrameSink
from tests._emulator import wait_for
from tests._fakes import our_tasks

pytestmark = pytest.mark.soak

SPRITE = "box"
MiB = 1 << 20
GiB = 1 << 30
TOKEN_VAR = "SOAK_TOKEN"
LEDGER = "soak-ledger"
"""Real processes append their token to this file in the sprite's home (their cwd)."""

_FULL = {"commands": 10_000, "cancellations": 1_000, "stream_bytes": GiB}
_SMALL = {"commands": 300, "cancellations": 100, "stream_bytes": 64 * MiB}
_SMALL_QUIRKS = {"commands": 300, "cancellations": 50, "stream_bytes": 16 * MiB}


def _scale() -> str:
    return os.environ.get("SPRITES_SOAK_SCALE", "small").strip().lower()


def soak_sizes(profile: str = "none") -> dict[str, int]:
    """The sizes for this run, from ``SPRITES_SOAK_SCALE`` (and the quirk profile:
    in the default small run a quirk profile runs fewer cancellations and a
    smaller stream; fewer commands would make "most succeed" a coin toss)."""
    raw = _scale()
    if raw in ("", "small", "default"):
        return dict(_SMALL if profile == "none" else _SMALL_QUIRKS)
    if raw == "full":
        return dict(_FULL)
    try:
        factor = float(raw)
    except ValueError:
        raise pytest.UsageError(
            f"SPRITES_SOAK_SCALE must be small, full or a number, not {raw!r}"
        ) from None
    if factor <= 0:
        raise pytest.UsageError("SPRITES_SOAK_SCALE must be > 0")
    return {key: max(1, int(value * factor)) for key, value in _FULL.items()}


def soak_profiles() -> list[str]:
    """The quirk profiles to run, from ``SPRITES_SOAK_QUIRKS``."""
    raw = os.environ.get("SPRITES_SOAK_QUIRKS")
    if raw is None:
        return ["none", "real-world"]
    profiles = [p.strip() for p in raw.split(",") if p.strip()] or ["none"]
    for profile in profiles:
        try:
            quirk_names(profile)
        except ValueError as exc:
            raise pytest.UsageError(f"SPRITES_SOAK_QUIRKS: {exc}") from None
    return profiles


def quirk_names(profile: str) -> list[str]:
    """What ``Emulator(quirks=...)`` gets for a profile entry (``a+b`` joins two)."""
    if profile == "none":
        return []
    names = [p for p in profile.split("+") if p]
    resolve_quirks(names)  # ValueError on an unknown name: a typo must not test nothing
    return names


PROFILES = soak_profiles()
SEED = int(os.environ.get("SPRITES_SOAK_SEED", "20260401"))
_report_lock = threading.Lock()


def report(name: str, figures: dict[str, Any]) -> None:
    """Print one summary line and merge the figures into ``SPRITES_SOAK_REPORT``."""
    line = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\nSOAK {name}: {line}", flush=True)
    path = os.environ.get("SPRITES_SOAK_REPORT")
    if not path:
        return
    with _report_lock:
        target = Path(path)
        data: dict[str, Any] = {}
        if target.exists():
            with contextlib.suppress(ValueError, OSError):
                loaded = json.loads(target.read_text())
                if isinstance(loaded, dict):
                    data = loaded
        data[name] = figures
        data["scale"] = _scale() or "small"
        data["seed"] = SEED
        data["machine"] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        data["updated"] = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        )
        target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def report_name(test: str, profile: str) -> str:
    return test if profile == "none" else f"{test}[{profile}]"


async def no_live_processes(sids: Any, timeout: float = 10.0) -> int:
    """Wait until no process of any emulator session is alive and none is left
    unreaped; return the number of zombies still there at the deadline (asserted
    zero by the callers: a zombie is a reaping bug)."""
    wanted = set(sids)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        members = session_members(proc_table(), wanted)
        alive = [p for p in members if p.state != "Z"]
        if not members:
            return 0
        if loop.time() > end:
            if alive:
                raise AssertionError(f"processes of exec sessions still alive: {alive}")
            return len(members)
        await asyncio.sleep(0.05)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> Counter[str]:
    """Open descriptors of this process by kind (socket, pipe, anon_inode, file)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return kinds


def rss_of(pid: int | str = "self") -> int:
    """Resident set size in bytes (VmRSS), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def all_within(coros: list[Awaitable[None]], seconds: float) -> None:
    """Run ``coros`` concurrently; fail (after cancelling them) if any is still
    running after ``seconds``. Unlike ``wait_for``, a coroutine that swallows the
    cancellation cannot turn a hang into a silent success."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=30)
        pytest.fail(f"{len(pending)} of {len(tasks)} tasks still running after {seconds} s: hang")
    for task in done:
        task.result()


def is_prefix(part: bytes, whole: bytes | None) -> bool:
    """Whether ``part`` is what a command that prints ``whole`` may have printed so far."""
    return whole is not None and whole.startswith(part)


# ------------------------------------------------------------------- fixtures


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    """The quirk profile this run of the test uses (``none``: no quirks)."""
    name: str = request.param
    return name


@pytest.fixture
def fired(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the faults the emulator really performed, where it performs them:
    TCP drops (``FrameSink.drop``) and handshake resets (``_faults._abort``)."""
    counts: Counter[str] = Counter()
    drop = FrameSink.drop
    abort = _faults._abort

    def counting_drop(self: FrameSink) -> None:
        if not self.dropped:
            counts["drops"] += 1
        drop(self)

    def counting_abort(request: Any) -> Any:
        counts["resets"] += 1
        return abort(request)

    monkeypatch.setattr(FrameSink, "drop", counting_drop)
    monkeypatch.setattr(_faults, "_abort", counting_abort)
    return counts


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times the emulator was asked to start each command, by the
    command's token (its ``SOAK_TOKEN`` variable): at most once, always."""
    counts: Counter[str] = Counter()
    create = SessionManager.create

    async def counting_create(
        self: SessionManager, sprite: str, spec: ProcSpec, max_run: float | None
    ) -> Any:
        for item in spec.env or ():
            key, _, value = item.partition("=")
            if key == TOKEN_VAR:
                counts[value] += 1
        return await create(self, sprite, spec, max_run)

    monkeypatch.setattr(SessionManager, "create", counting_create)
    return counts


@dataclass
class SoakEmulator:
    url: str
    token: str
    state: EmulatorState
    quirks: list[str]

    def ledger(self) -> Counter[str]:
        """Tokens the real processes appended to the ledger, with their counts."""
        path = self.state.sprite_root(SPRITE) / "home" / "sprite" / LEDGER
        try:
            return Counter(path.read_text().split())
        except FileNotFoundError:
            return Counter()


@pytest.fixture
async def soak_emu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> AsyncIterator[SoakEmulator]:
    """The emulator as users run it (``Emulator``: an ``AppRunner`` in this event
    loop), with the inline executor and, for commands it does not recognise,
    real processes (under bubblewrap when available), and the quirks of
    ``profile``.

    Non-TTY sessions outlive a lost connection for 10 s by default; here for
    300 s, so that a command the SDK failed to kill stays visible to the checks
    instead of quietly expiring.

    ``SPRITES_SOAK_SANDBOX`` picks the sandbox (default ``auto``: bubblewrap
    when it is installed).
    """
    monkeypatch.setattr(_wsio, "NON_TTY_MAX_RUN", 300.0)
    default = "auto"
    emulator = Emulator(
        "soak-org/1/tok/secret",
        state_dir=tmp_path / "state",
        exit_linger=5.0,  # the real linger: the client must not wait for it
        warm_after=300.0,
        cold_after=3000.0,
        inline_exec=True,
        sandbox=os.environ.get("SPRITES_SOAK_SANDBOX") or default,
        # No port scans: they cost CPU and prove nothing here.
        extra={"exec_port_poll": 0},
        quirks=quirk_names(profile) or None,
    )
    async with emulator:
        insert_sprite(emulator.state, new_record(emulator.state, SPRITE))
        yield SoakEmulator(emulator.url, emulator.token, emulator.state, list(emulator.quirks))


def make_client(emu: SoakEmulator, *, control: bool) -> SpritesClient:
    client = SpritesClient(emu.token, base_url=emu.url)
    client.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=3.0, exit_grace=1.0)
    client.control = ControlOptions() if control else False
    return client


def lost_by_design(quirks: list[str]) -> bool:
    """Whether the quirks end every ``/control`` start in a lost exit status (the
    socket dropped after ``op.start``, and ``/control`` not refused outright)."""
    return "control-drop-after-start" in quirks and not set(quirks) & set(CONTROL_REFUSALS)


def once_violations(starts: Counter[str], ledger: Counter[str]) -> list[str]:
    """Tokens started (server side) or run (ledger) more than once."""
    twice = [f"{t}: started {n} times" for t, n in starts.items() if n > 1]
    twice += [f"{t}: ran {n} times (ledger)" for t, n in ledger.items() if n > 1]
    twice += [f"{t}: in the ledger, never started" for t in ledger if t not in starts]
    return twice


# ------------------------------------------------- 1. commands under injected drops


@dataclass
class Expected:
    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes = b""
    token: str = ""
    real: bool = False  # a real process, which writes its token to the ledger


def make_command(rng: random.Random, i: int) -> Expected:
    """A command whose exit code and output follow from its arguments."""
    kind = rng.random()
    token = f"c{i}-{rng.getrandbits(32):08x}"
    if kind < 0.30:  # inline echo
        words = [token] + [f"w{rng.randrange(1000)}" for _ in range(rng.randrange(4))]
        return Expected(("echo", *words), 0, (" ".join(words) + "\n").encode(), token=token)
    if kind < 0.45:  # inline exit K
        code = rng.randrange(256)
        return Expected(("sh", "-c", f"exit {code}"), code, b"", token=token)
    if kind < 0.55:  # inline true/false
        code = rng.randrange(2)
        return Expected(("true",) if code == 0 else ("false",), code, b"", token=token)
    if kind < 0.75:  # inline multi-frame output (64 KiB frames)
        size = rng.choice([0, 1, 65535, 65536, 65537, rng.randrange(1, 400_000)])
        return Expected(("head", "-c", str(size), "/dev/zero"), 0, bytes(size), token=token)
    # A real process: stdout, stderr and the exit code all derived from the
    # arguments; first it appends its token to the ledger (its cwd is the home).
    code = rng.randrange(256)
    reps = rng.randrange(1, 2000)
    script = (
        f'printf "%s\\n" "${TOKEN_VAR}" >> {LEDGER};'
        ' i=0; while [ $i -lt "$2" ]; do printf "%s." "$1"; i=$((i+1)); done;'
        ' printf "%s" "$3" >&2; exit "$4"'
    )
    err = f"e{token}"
    return Expected(
        ("sh", "-c", script, "sh", token, str(reps), err, str(code)),
        code,
        (token + ".").encode() * reps,
        err.encode(),
        token=token,
        real=True,
    )


@dataclass
class Tally:
    ok: int = 0
    wrong_exit: int = 0
    wrong_output: int = 0
    wrong_partial: int = 0  # ExitStatusUnknownError whose partial output is not a prefix
    protocol_errors: int = 0  # ProtocolError/StreamError: never acceptable here
    exit_unknown: int = 0
    partial_checked: int = 0  # ExitStatusUnknownErrors that carried some output
    partial_bytes: int = 0
    typed: Counter[str] = field(default_factory=Counter)
    untyped: list[str] = field(default_factory=list)
    hung: int = 0
    by_mode: Counter[str] = field(default_factory=Counter)
    wrong_examples: list[str] = field(default_factory=list)
    completed: set[str] = field(default_factory=set)  # tokens of commands that returned


def check_error(exc: SpritesError, exp_stdout: bytes | None, exp_stderr: bytes, tally: Any) -> bool:
    """Classify a typed error; False (and an example) if it is a wrong one."""
    name = type(exc).__name__
    if isinstance(exc, ProtocolError):  # StreamError included
        tally.protocol_errors += 1
        tally.wrong_examples.append(f"{name}: {exc}")
        return False
    tally.typed[name] += 1
    if isinstance(exc, ExitStatusUnknownError):
        tally.exit_unknown += 1
        if exc.stdout or exc.stderr:
            tally.partial_checked += 1
            tally.partial_bytes += len(exc.stdout) + len(exc.stderr)
        if not (is_prefix(exc.stdout, exp_stdout) and is_prefix(exc.stderr, exp_stderr)):
            tally.wrong_partial += 1
            tally.wrong_examples.append(
                f"ExitStatusUnknownError partial stdout {exc.stdout[:40]!r}"
                f" ({len(exc.stdout)} bytes), stderr {exc.stderr[:40]!r}: not a prefix"
            )
            return False
    return True


async def chaos(emu: SoakEmulator, rng: random.Random, stop: asyncio.Event) -> Counter[str]:
    """Random fault windows: frame-count drops (any socket sending a frame during the
    window loses its TCP connection) and handshake resets."""
    counts: Counter[str] = Counter()
    faults = emu.state.faults
    faults.error_path = r"/v1/sprites/[^/]+/(exec|control)$"
    try:
        while not stop.is_set():
            await asyncio.sleep(rng.expovariate(1 / 0.02))
            roll = rng.random()
            if roll < 0.75:
                # Sockets count frames over their whole life: a limit of 1..3
                # drops whichever socket sends next; 0 also drops fresh upgrades.
                faults.drop_ws_after_frames = rng.choice([0, 1, 1, 2, 3])
                counts["drop_windows"] += 1
                await asyncio.sleep(rng.uniform(0, 0.004))
                faults.drop_ws_after_frames = None
            else:
                faults.reset_count += 1
                counts["resets_armed"] += 1
    finally:
        faults.drop_ws_after_frames = None
        counts["resets_unused"] = faults.reset_count
        faults.reset_count = 0
        faults.error_path = None
    return counts


async def run_checked(
    client: SpritesClient, exp: Expected, tally: Tally, mode: str, per_command: float
) -> None:
    tally.by_mode[mode] += 1
    try:
        result = await asyncio.wait_for(
            client.sprite(SPRITE).exec(*exp.argv, env={TOKEN_VAR: exp.token}),
            timeout=per_command,
        )
    except SpritesError as exc:  # before TimeoutError: some of them are TimeoutErrors too
        check_error(exc, exp.stdout, exp.stderr, tally)
        return
    except asyncio.TimeoutError:
        tally.hung += 1
        return
    except Exception as exc:  # anything else is a bug: an untyped error
        tally.untyped.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        return
    tally.completed.add(exp.token)
    if result.exit_code != exp.exit_code:
        tally.wrong_exit += 1
        tally.wrong_examples.append(f"{exp.argv[:2]} exit {result.exit_code} != {exp.exit_code}")
    elif result.stdout != exp.stdout or result.stderr != exp.stderr:
        tally.wrong_output += 1
        tally.wrong_examples.append(
            f"{exp.argv[:2]} stdout {len(result.stdout)}/{len(exp.stdout)} bytes,"
            f" stderr {result.stderr[:40]!r} != {exp.stderr[:40]!r}"
        )
    else:
        tally.ok += 1


def assert_pool_consistent(client: SpritesClient) -> dict[str, int]:
    """Nothing lent, nothing waiting, and the pool's counters agree with its sockets."""
    pool = pool_for(client)
    stats = pool.stats(SPRITE)
    assert stats["waiting"] == 0, stats
    assert stats["open"] == stats["idle"], f"sockets still lent out (busy): {stats}"
    state = pool._sprites.get(SPRITE)
    if state is not None:
        assert state.count == len(state.idle)
    assert pool._total == sum(s.count for s in pool._sprites.values())
    assert not pool._waiters
    return stats


def test_the_checks_count_what_is_wrong() -> None:
    """The soak's own checks are not vacuous: each kind of wrong answer counts."""
    tally = Tally()
    lost = ExitStatusUnknownError("connection lost")
    lost.stdout, lost.stderr = b"abc", b""
    assert check_error(lost, b"abcdef", b"", tally)  # a true prefix: acceptable
    lost.stdout = b"abd"
    assert not check_error(lost, b"abcdef", b"", tally)  # not a prefix: wrong
    lost.stdout, lost.stderr = b"", b"x"
    assert not check_error(lost, b"abcdef", b"", tally)  # stderr the command never wrote
    assert not check_error(ProtocolError("bad frame"), b"", b"", tally)
    assert not check_error(StreamError("stream ended early"), b"", b"", tally)
    assert check_error(SpritesConnectionError("reset"), b"", b"", tally)
    assert (tally.wrong_partial, tally.protocol_errors, tally.exit_unknown) == (2, 2, 3)
    assert tally.typed == Counter({"ExitStatusUnknownError": 3, "SpritesConnectionError": 1})
    assert once_violations(Counter({"a": 1, "b": 2}), Counter({"a": 1, "c": 1})) == [
        "b: started 2 times",
        "c: in the ledger, never started",
    ]
    assert once_violations(Counter({"a": 1}), Counter({"a": 2})) == ["a: ran 2 times (ledger)"]


async def test_commands_under_injected_drops(
    soak_emu: SoakEmulator, fired: Counter[str], starts: Counter[str], profile: str
) -> None:
    emu = soak_emu
    total = soak_sizes(profile)["commands"]
    rng = random.Random(SEED)
    direct_every = 5  # one command in five on a direct /exec socket
    concurrency = 24
    pooled = make_client(emu, control=True)
    direct = make_client(emu, control=False)
    commands = [make_command(rng, i) for i in range(total)]
    tally = Tally()
    stop = asyncio.Event()
    chaos_task = asyncio.ensure_future(chaos(emu, random.Random(SEED + 1), stop))
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            mode = "direct" if i % direct_every == 0 else "control"
            await run_checked(
                direct if mode == "direct" else pooled, commands[i], tally, mode, per_command=60
            )

    start = time.monotonic()
    try:
        # The pool must never hang: everything within a generous overall bound.
        await all_within([worker() for _ in range(concurrency)], max(120.0, total * 0.1))
    finally:
        stop.set()
        counts = await chaos_task
    elapsed = time.monotonic() - start

    # After the storm: every client still works, and the pool recovered.
    for client in (pooled, direct):
        for i in range(5):
            result = await client.sprite(SPRITE).exec("sh", "-c", f"exit {i}")
            assert result.exit_code == i
    stats = assert_pool_consistent(pooled)
    assert pool_for(direct).stats() == {"open": 0, "idle": 0, "waiting": 0}
    pool = pool_for(pooled)

    # Commands cut off by a drop were detached; they are short and end on their own.
    manager = emu.state.sessions
    await wait_for(lambda: not manager.list(SPRITE), timeout=30)
    for client in (pooled, direct):
        await client.aclose()
    assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}
    assert our_tasks() == []
    await wait_for(lambda: not manager.sockets, timeout=10)
    zombies = await no_live_processes(manager.sids)  # type: ignore[attr-defined]

    ledger = emu.ledger()
    twice = once_violations(starts, ledger)
    # A command that returned a result was started once on the server, and a
    # real one ran (its ledger line).
    missing = [f"{t}: returned, never started" for t in tally.completed if starts[t] != 1]
    missing += [
        f"{c.token}: returned, not in the ledger"
        for c in commands
        if c.real and c.token in tally.completed and c.token not in ledger
    ]
    typed = sum(tally.typed.values())
    resets_counted = counts["resets_armed"] - counts["resets_unused"]
    figures = {
        "commands": total,
        "quirks": emu.quirks,
        "direct": tally.by_mode["direct"],
        "control": tally.by_mode["control"],
        "ok": tally.ok,
        "drops_injected": fired["drops"],
        "drop_windows": counts["drop_windows"],
        "resets_injected": fired["resets"],
        "typed_errors": typed,
        "typed_by_class": dict(tally.typed),
        "exit_status_unknown": tally.exit_unknown,
        "partial_outputs_checked": tally.partial_checked,
        "partial_bytes_checked": tally.partial_bytes,
        "protocol_errors": tally.protocol_errors,
        "wrong_partial_outputs": tally.wrong_partial,
        "untyped_errors": len(tally.untyped),
        "wrong_exit_codes": tally.wrong_exit,
        "wrong_outputs": tally.wrong_output,
        "hung": tally.hung,
        "started_on_server": len(starts),
        "started_twice": len(twice),
        "ledger_entries": sum(ledger.values()),
        "pool_dials": pool.dials,
        "pool_after": stats,
        "real_processes": len(manager.sids),  # type: ignore[attr-defined]
        "emulator_zombies": zombies,
        "seconds": round(elapsed, 1),
    }
    report(report_name("commands", profile), figures)
    assert tally.untyped == [], tally.untyped[:10]
    assert tally.protocol_errors == 0, tally.wrong_examples[:10]
    assert tally.wrong_exit == 0, tally.wrong_examples[:10]
    assert tally.wrong_output == 0, tally.wrong_examples[:10]
    assert tally.wrong_partial == 0, tally.wrong_examples[:10]
    assert tally.hung == 0
    assert tally.ok + typed == total
    # At most once: no command was started twice, none ran twice, and every
    # command that returned a result was started (and, if real, ran) once.
    assert twice == [], twice[:10]
    assert missing == [], missing[:10]
    assert zombies == 0
    # The faults really happened (counted where the emulator performs them),
    # and most commands still succeeded.
    assert fired["drops"] > 0
    assert fired["resets"] > 0
    assert fired["resets"] == resets_counted  # every armed reset that went was seen
    assert typed > 0
    if lost_by_design(emu.quirks):
        # Every control start is answered by a dropped socket: only the direct
        # commands can succeed (and most of them must).
        assert tally.ok > tally.by_mode["direct"] // 2
    else:
        assert tally.ok > total // 2


# ------------------------------------------------------ 2. cancellations at random


@dataclass
class CancelTally:
    cancelled: int = 0
    timed_out: int = 0  # exec(timeout=...) -> CommandTimeoutError
    wait_for_timeouts: int = 0  # asyncio.wait_for around exec
    completed: int = 0
    wrong: list[str] = field(default_factory=list)
    typed: Counter[str] = field(default_factory=Counter)
    untyped: list[str] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    protocol_errors: int = 0
    wrong_partial: int = 0
    exit_unknown: int = 0
    partial_checked: int = 0
    partial_bytes: int = 0
    wrong_examples: list[str] = field(default_factory=list)


def cancel_command(rng: random.Random) -> tuple[str, tuple[str, ...], bytes | None]:
    """(kind, argv, expected stdout if it completes; None: it must never complete)."""
    roll = rng.random()
    if roll < 0.40:
        return "inline-sleep", ("sleep", "60"), None
    if roll < 0.70:
        # A real process (under bubblewrap when available) that ignores nothing:
        # the kill has to reach the sandbox for it to end before 60 s.
        return "real-sleep", ("sh", "-c", "sleep 60; echo late"), None
    if roll < 0.85:
        return "real-trap", ("sh", "-c", "trap '' TERM; sleep 60; echo late"), None
    token = f"q{rng.getrandbits(24):06x}"
    return "quick", ("echo", token), f"{token}\n".encode()


async def test_cancellations_at_random_moments(
    soak_emu: SoakEmulator, starts: Counter[str], profile: str
) -> None:
    emu = soak_emu
    manager = emu.state.sessions
    total = soak_sizes(profile)["cancellations"]
    rng = random.Random(SEED + 2)
    # The sprite's first real process sets up what the emulator keeps for the
    # sprite's lifetime (the sockets to its network namespace's holder): count
    # from there, so that only what the cancellations leave behind is measured.
    async with make_client(emu, control=False) as warm:
        await warm.sprite(SPRITE).exec("sh", "-c", "true")  # a real process, not inline
    fds_before = fd_count()
    kinds_before = fd_targets()
    pooled = make_client(emu, control=True)
    direct = make_client(emu, control=False)
    tally = CancelTally()
    batch = 20
    start = time.monotonic()

    # With every control start lost by design, the SDK cannot know what it
    # started there (nor kill it): only direct sockets are cancelled then.
    control_lost = lost_by_design(emu.quirks)

    async def one(i: int) -> None:
        client = direct if i % 3 == 0 or control_lost else pooled
        kind, argv, expected = cancel_command(rng)
        how = rng.choice(["cancel", "cancel", "wait_for", "timeout"])
        delay = rng.choice([0.0, rng.uniform(0, 0.005), rng.uniform(0, 0.05), rng.uniform(0, 0.3)])
        mode = "direct" if client is direct else "control"
        tally.by_kind[f"{kind}/{how}/{mode}"] += 1
        sprite = client.sprite(SPRITE)
        env = {TOKEN_VAR: f"k{i}"}
        try:
            if how == "timeout":
                result = await sprite.exec(*argv, env=env, timeout=max(delay, 0.001))
            elif how == "wait_for":
                result = await asyncio.wait_for(sprite.exec(*argv, env=env), timeout=delay)
            else:
                task = asyncio.ensure_future(sprite.exec(*argv, env=env))
                await asyncio.sleep(delay)
                task.cancel()
                result = await task
        except asyncio.CancelledError:
            tally.cancelled += 1
            return
        except CommandTimeoutError:
            tally.timed_out += 1
            return
        except SpritesError as exc:  # before TimeoutError: some of them are TimeoutErrors too
            # A command that must never complete has no output to show so far.
            check_error(exc, expected or b"", b"", tally)
            return
        except asyncio.TimeoutError:
            tally.wait_for_timeouts += 1
            return
        except Exception as exc:
            tally.untyped.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            return
        tally.completed += 1
        if expected is None or result.exit_code != 0 or result.stdout != expected:
            tally.wrong.append(
                f"{argv} ({how} after {delay:.4f} s, {mode}): completed with exit"
                f" {result.exit_code}, stdout {result.stdout[:40]!r}"
            )

    for first in range(0, total, batch):
        await all_within([one(i) for i in range(first, min(first + batch, total))], 120)
        # The SDK waits for the exit before it lets a cancellation through: what
        # it started is gone already. 10 s is slack for a loaded machine; a
        # command the kill did not reach would live 60 s.
        try:
            await wait_for(lambda: not manager.list(SPRITE), timeout=10)
        except AssertionError:
            left = [(s.id, s.argv, s.inline, len(s.attachments)) for s in manager.list(SPRITE)]
            raise AssertionError(
                f"sessions still running after their exec was cancelled: {left}"
            ) from None
    elapsed = time.monotonic() - start

    # No process of any session is left alive in the sandbox (OS level).
    zombies = await no_live_processes(manager.sids)  # type: ignore[attr-defined]
    for client in (pooled, direct):
        await client.aclose()
    assert our_tasks() == []
    await wait_for(lambda: not manager.sockets, timeout=10)
    # Descriptors: the clients' sockets are closed, and the emulator's side of
    # them (closed when it notices) too. The emulator itself keeps running.
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while fd_count() > fds_before and loop.time() < end:
        await asyncio.sleep(0.05)
    fds_after = fd_count()
    twice = once_violations(starts, Counter())
    typed = sum(tally.typed.values())
    figures = {
        "cancellations": total,
        "quirks": emu.quirks,
        "over_control": not control_lost,
        "cancelled": tally.cancelled,
        "exec_timeouts": tally.timed_out,
        "wait_for_timeouts": tally.wait_for_timeouts,
        "completed_first": tally.completed,
        "typed_errors": typed,
        "typed_by_class": dict(tally.typed),
        "exit_status_unknown": tally.exit_unknown,
        "partial_outputs_checked": tally.partial_checked,
        "protocol_errors": tally.protocol_errors,
        "wrong_partial_outputs": tally.wrong_partial,
        "untyped_errors": len(tally.untyped),
        "wrong_results": len(tally.wrong),
        "started_on_server": len(starts),
        "started_twice": len(twice),
        "real_processes": len(manager.sids),  # type: ignore[attr-defined]
        "emulator_zombies": zombies,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "seconds": round(elapsed, 1),
    }
    report(report_name("cancellations", profile), figures)
    assert tally.untyped == [], tally.untyped[:10]
    assert tally.protocol_errors == 0, tally.wrong_examples[:10]
    assert tally.wrong_partial == 0, tally.wrong_examples[:10]
    assert tally.wrong == [], tally.wrong[:10]
    assert twice == [], twice[:10]
    assert zombies == 0
    assert fds_after <= fds_before, (kinds_before, fd_targets())
    interrupted = tally.cancelled + tally.timed_out + tally.wait_for_timeouts
    assert interrupted + tally.completed + typed + tally.protocol_errors == total
    assert interrupted > total // 2


# ------------------------------------------------- 3. a large stream, a slow reader


class RssSampler(threading.Thread):
    """Samples the RSS of this process and of the emulator process every 10 ms."""

    def __init__(self, pids: dict[str, int | str]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.baseline = {name: rss_of(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], rss_of(pid))

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self.join()
        self.sample()
        return {name: self.peak[name] - self.baseline[name] for name in self.pids}


@dataclass
class ExternalEmulator:
    url: str
    token: str
    pid: int


@pytest.fixture
async def external_emu(tmp_path: Path, profile: str) -> AsyncIterator[ExternalEmulator]:
    """The emulator in its own process, so that this process's RSS is the SDK's
    (plus the test's) alone, and the emulator's can be measured separately."""
    quirks = [arg for name in quirk_names(profile) for arg in ("--quirk", name)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sprites_async.emulator",
        "--json",
        "--exit-linger",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
        *quirks,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        info = json.loads(line)
        yield ExternalEmulator(info["url"], info["token"], proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if proc.stdout is not None:
            with contextlib.suppress(Exception):
                await proc.stdout.read()


class PatternChecker:
    """Checks a stream that is ``pattern`` repeated, chunk by chunk, at its offset."""

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern
        self.period = len(pattern)
        self.window = pattern * ((4 * MiB) // self.period + 2)
        self.offset = 0
        self.mismatches = 0

    def feed(self, chunk: bytes) -> None:
        start = self.offset % self.period
        n = len(chunk)
        if n <= len(self.window) - start:
            ok = self.window[start : start + n] == chunk
        else:
            reps = (start + n) // self.period + 1
            ok = (self.pattern * reps)[start : start + n] == chunk
        if not ok:
            self.mismatches += 1
        self.offset += n


async def test_large_stream_through_a_slow_reader_stays_bounded(
    external_emu: ExternalEmulator, profile: str
) -> None:
    size = soak_sizes(profile)["stream_bytes"]
    line = b"sprites-soak-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    checker = PatternChecker(line + b"\n")
    settings = ExecSettings()  # the default buffer_size (1 MiB)
    async with SpritesClient(external_emu.token, base_url=external_emu.url) as client:
        # get_or_create: under post-answer-lost the first create's answer is
        # lost (the sprite is made all the same) and create is never re-sent.
        try:
            await client.sprites.create(SPRITE)
        except SpritesConnectionError:
            await client.sprites.get(SPRITE)
        sprite = client.sprite(SPRITE)
        assert (await sprite.exec("true")).exit_code == 0  # warm everything up
        rng = random.Random(SEED + 3)
        sampler = RssSampler({"sdk": "self", "emulator": external_emu.pid})
        sampler.start()
        max_buffered = 0
        stalls = 0
        start = time.monotonic()
        try:
            async with sprite.process(
                "sh", "-c", f"yes {line.decode()} | head -c {size}", stdin=False
            ) as proc:
                since_pause = 0
                next_stall = 32 * MiB
                async for chunk in proc.stdout:
                    checker.feed(chunk)
                    since_pause += len(chunk)
                    max_buffered = max(max_buffered, proc._buffered)
                    if since_pause >= MiB:  # a slow consumer: a short nap every MiB
                        since_pause = 0
                        await asyncio.sleep(rng.uniform(0, 0.004))
                    if checker.offset >= next_stall:  # and now and then a long stall
                        next_stall += 32 * MiB
                        stalls += 1
                        await asyncio.sleep(0.25)
                        max_buffered = max(max_buffered, proc._buffered)
                code = await proc.wait()
        finally:
            growth = sampler.stop()
        elapsed = time.monotonic() - start
    figures = {
        "bytes_expected": size,
        "quirks": quirk_names(profile),
        "bytes_streamed": checker.offset,
        "mismatched_chunks": checker.mismatches,
        "exit_code": code,
        "stalls": stalls,
        "max_sdk_buffered": max_buffered,
        "sdk_rss_growth_mib": round(growth["sdk"] / MiB, 1),
        "emulator_rss_growth_mib": round(growth["emulator"] / MiB, 1),
        "mib_per_s": round(size / MiB / elapsed, 1),
        "seconds": round(elapsed, 1),
    }
    report(report_name("stream", profile), figures)
    assert code == 0
    assert checker.offset == size
    assert checker.mismatches == 0
    # Backpressure: never more than the buffer plus one frame waits unread ...
    assert max_buffered <= settings.buffer_size + 4 * MiB
    # ... so memory stays flat however much flows (generous bounds: shared machine).
    assert growth["sdk"] < 64 * MiB, figures
    assert growth["emulator"] < 64 * MiB, figures
