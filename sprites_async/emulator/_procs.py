"""Real processes for exec sessions: bubblewrap or plain subprocesses, pipes or a pty.

Each sprite has a host directory (``state.sprite_root(name)``) that plays its
``/``. With bubblewrap the command sees that directory's ``home`` and ``tmp``
(and any other top-level directory created in it) read-write, plus the host's
``/usr`` and ``/bin``-style links read-only and an ``/etc`` generated for the
sprite, as the unprivileged ``sprite`` user without capabilities, in PID, IPC,
UTS, cgroup and user namespaces of its own, under the sprite's limits and in
the sprite's network namespace (see :func:`bwrap_args`, ``_sandbox`` and
``_netns``). Without it, commands run as plain host processes whose working
directory, default ``HOME`` and executable are mapped into the sprite root;
paths the command itself opens are host paths (this mode is not a sandbox,
and every front end says so).

Process hygiene, the part that is easy to get wrong:

* Every command runs in its own session (``start_new_session`` or ``setsid``),
  so a signal for "the process group" never reaches the emulator.
* When the command ends, whatever it left behind in its session is killed:
  a session ends with its process (bubblewrap's PID namespace does the same).
* Orphans must be reaped by someone. The container's init reaps only every
  second or two and bubblewrap's inner init is always orphaned, so the
  emulator process makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``)
  and reaps the zombies of its own sessions, never a PID that asyncio waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import os
import posixpath
import shutil
import signal
import struct
import termios
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ._framing import DEFAULT_PATH, SPRITE_HOME, STREAM_STDERR, STREAM_STDOUT, exit_status
from ._netns import NetworkUnavailable
from ._sandbox import SPRITE_UID, Jail, etc_args, probe_bwrap, root_prefix

OutputItem = tuple[int, bytes] | None
"""``(stream id, bytes)`` from a process, ``None`` once all output has been read."""

_READ_SIZE = 65536
_QUEUE_DEPTH = 8
_LEFTOVER_GRACE = 0.2
"""Seconds to wait for output EOF after the command exits before killing its leftovers."""

_SANDBOX_RO = ("/usr",)
_SANDBOX_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_RESERVED_TOP = {"usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "dev"}


class StartError(Exception):
    """The command could not be started (missing executable or directory).

    The message is Go's ``exec`` error text, as the real service words it
    (``exec: "x": executable file not found in $PATH``, ``fork/exec /x:
    permission denied``, ``chdir /d: no such file or directory``).
    ``shell_status`` is what a shell would exit with: 127 for a missing
    executable, else 126 (sent as ``exitCode`` over ``/control``, where
    SDKs that read only ``exitCode`` would otherwise see 0).
    """

    def __init__(self, message: str, *, shell_status: int = 126) -> None:
        super().__init__(message)
        self.shell_status = shell_status


@dataclass
class ProcSpec:
    """What to run, in the sprite's own terms (paths as the sprite sees them)."""

    argv: list[str]
    path: str
    env: list[str] | None = None
    dir: str = SPRITE_HOME
    tty: bool = False
    cols: int = 80
    rows: int = 24
    stdin: bool = False


class ProcessLike(Protocol):
    """What a session needs from a running command (real or inline)."""

    pid: int
    output: asyncio.Queue[OutputItem]

    async def write_stdin(self, data: bytes) -> None:
        """Feed bytes to the command's stdin (or pty); ignored once closed."""

    def close_stdin(self) -> None:
        """Deliver EOF on a pipe stdin (no-op for a pty)."""

    def resize(self, cols: int, rows: int) -> None:
        """Change the terminal size (no-op without a pty)."""

    async def send_signal(self, sig: int) -> bool:
        """Signal the command's process group; False if it is already gone."""

    def kill(self) -> None:
        """SIGKILL everything the command started, without waiting."""

    async def wait(self) -> int:
        """Wait for the command to end; its exit byte (128+N for signal deaths)."""

    async def terminate(self) -> None:
        """Kill everything the command started and reap it (idempotent)."""


# --------------------------------------------------------------------------
# /proc helpers


class ProcInfo(NamedTuple):
    """One line of ``/proc/<pid>/stat`` that matters here."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int


def proc_table() -> dict[int, ProcInfo]:
    """Snapshot of every process visible in ``/proc``."""
    table: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _read_stat(int(entry))
            if info is not None:
                table[info.pid] = info
    return table


def descendants(table: dict[int, ProcInfo], root: int) -> list[int]:
    """PIDs below ``root`` in the parent tree (not including ``root``)."""
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    out: list[int] = []
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def session_members(table: dict[int, ProcInfo], sids: Iterable[int]) -> list[ProcInfo]:
    """Processes (zombies included) whose session id is one of ``sids``."""
    wanted = set(sids)
    return [info for info in table.values() if info.sid in wanted]


_subreaper_enabled = False


def enable_subreaper() -> None:
    """Make this process the reaper of its descendants' orphans (Linux only, once)."""
    global _subreaper_enabled
    if _subreaper_enabled:
        return
    _subreaper_enabled = True
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _read_stat(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses; the fields after the last ')' are fixed.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcInfo(pid, rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3]))
    except (IndexError, ValueError):
        return None


def reap_members(sids: Iterable[int], *, gone: set[int] | None = None) -> int:
    """SIGKILL the processes of the given sessions and reap our zombies among them.

    Returns how many are still there. Only zombies that are our own children
    are reaped. The whole process table is looked at, not only our children:
    under bubblewrap, a sandbox's inner processes are reparented to us (the
    subreaper) only once the outer one is gone, and count until then.

    ``gone`` holds the session ids whose leader was already waited for
    (asyncio's own child, or reaped here); it is updated in place. Linux hands
    a session id out again only once every member of the old session is gone,
    so a process whose pid is such an id leads a new session, someone else's:
    it is never touched.
    """
    wanted = set(sids)
    gone = set() if gone is None else gone
    me = os.getpid()
    candidates = list(proc_table().values())
    present = {info.pid for info in candidates}
    wanted -= {info.sid for info in candidates if info.pid == info.sid and info.sid in gone}
    gone.update(sid for sid in wanted if sid not in present)
    remaining = 0
    for info in candidates:
        if info.sid not in wanted:
            continue
        if info.state != "Z":
            with contextlib.suppress(OSError):
                os.kill(info.pid, signal.SIGKILL)
            remaining += 1
        elif info.ppid == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)
                if info.pid == info.sid:
                    gone.add(info.pid)
        else:
            remaining += 1  # someone else's zombie: its parent (or init) reaps it
    return remaining


async def reap_sessions(
    sids: Sequence[int], *, gone: set[int] | None = None, deadline: float = 3.0
) -> bool:
    """Kill and reap session members until none remain; False on timeout."""
    gone = set() if gone is None else gone
    end = time.monotonic() + deadline
    delay = 0.002
    while True:
        if reap_members(sids, gone=gone) == 0:
            return True
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def listening_sockets(net_dir: str = "/proc/net") -> dict[int, tuple[str, int]]:
    """Socket inode → (address, port) for every TCP socket in LISTEN state.

    ``net_dir`` is ``/proc/<pid>/net`` for the network namespace of another
    process (the default is the emulator's own).
    """
    out: dict[int, tuple[str, int]] = {}
    for name, v6 in ((f"{net_dir}/tcp", False), (f"{net_dir}/tcp6", True)):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":
                continue
            addr_hex, port_hex = parts[1].split(":")
            out[int(parts[9])] = (_decode_addr(addr_hex, v6), int(port_hex, 16))
    return out


def _decode_addr(hexaddr: str, v6: bool) -> str:
    raw = bytes.fromhex(hexaddr)
    # /proc/net/tcp prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if not v6:
        return ".".join(str(b) for b in words)
    import ipaddress

    return str(ipaddress.IPv6Address(words))


def socket_inodes(pids: Iterable[int]) -> dict[int, int]:
    """Socket inode → owning PID for the open file descriptors of ``pids``."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.setdefault(int(target[8:-1]), pid)
    return out


PortKey = tuple[int, str, int]
"""``(port, address, pid)`` of one TCP listener."""


def listening_ports(
    roots: Iterable[int],
    *,
    table: dict[int, ProcInfo] | None = None,
    listening: dict[int, tuple[str, int]] | None = None,
) -> set[PortKey]:
    """TCP listeners held by ``roots`` or any of their descendants.

    ``table`` and ``listening`` let a caller scanning several process trees
    read ``/proc`` once for all of them.
    """
    if table is None:
        table = proc_table()
    if listening is None:
        listening = listening_sockets()
    pids: list[int] = []
    for root in roots:
        pids.append(root)
        pids.extend(descendants(table, root))
    owners = socket_inodes(pids)
    unknown = {pid for inode, pid in owners.items() if inode not in listening}
    if unknown:
        listening = {**listening, **_foreign_listeners(unknown)}
    return {
        (port, address, owners[inode])
        for inode, (address, port) in listening.items()
        if inode in owners
    }


def _foreign_listeners(pids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """Listeners of the network namespaces of ``pids`` other than the emulator's.

    A sprite isolated by its network policy listens in a namespace of its
    own, absent from the emulator's ``/proc/net/tcp``.
    """
    try:
        seen = {os.readlink("/proc/self/ns/net")}
    except OSError:
        return {}
    out: dict[int, tuple[str, int]] = {}
    for pid in pids:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if namespace not in seen:
            seen.add(namespace)
            out.update(listening_sockets(f"/proc/{pid}/net"))
    return out


# --------------------------------------------------------------------------
# Paths, environment, executables


def sandbox_available() -> bool:
    """Whether bubblewrap is installed and can create the sprites' user namespaces."""
    return probe_bwrap()[0]


def use_sandbox(mode: str) -> bool:
    """Resolve ``EmulatorConfig.sandbox`` to "run under bubblewrap or not"."""
    if mode in ("bwrap", "required"):
        return True
    if mode == "none":
        return False
    return sandbox_available()


def sprite_abspath(path: str, cwd: str = SPRITE_HOME) -> str:
    """A sprite path made absolute and normalised (relative to ``cwd``)."""
    return posixpath.normpath(posixpath.join(cwd, path))


def host_path(root: Path, sprite_path: str) -> Path:
    """Where a sprite path lives on the host.

    ``/home``, ``/tmp`` and any other top-level directory that exists in the
    sprite root map into it; system directories (``/usr``, ``/etc``...) are
    the host's own, as bubblewrap binds them.
    """
    p = sprite_abspath(sprite_path, "/")
    if p == "/":
        return root
    top = p.split("/", 2)[1]
    if top not in _RESERVED_TOP and (top in ("home", "tmp") or (root / top).exists()):
        return root / p[1:]
    return Path(p)


def build_env(env: Sequence[str] | None, *, tty: bool, root: Path, sandbox: bool) -> dict[str, str]:
    """The process environment (Section 3.13): defaults, or exactly what was given."""
    if env:
        out: dict[str, str] = {}
        for item in env:
            key, sep, value = item.partition("=")
            if sep and key:
                out[key] = value
        return out
    home = SPRITE_HOME if sandbox else str(host_path(root, SPRITE_HOME))
    out = {"PATH": DEFAULT_PATH, "HOME": home, "LANG": "C.UTF-8"}
    if tty:
        out["TERM"] = "xterm-256color"
    return out


def resolve_executable(root: Path, path: str, env: dict[str, str], cwd: str) -> tuple[str, Path]:
    """Find ``path`` as the sprite would: ``(sprite path, host path)``.

    Raises ``StartError`` when there is no such executable.
    """
    candidates: list[str]
    if "/" in path:
        # Go runs a path as given (no $PATH search): the kernel's answer.
        cand = sprite_abspath(path, cwd)
        host = host_path(root, cand)
        if not host.exists():
            raise StartError(f"fork/exec {path}: no such file or directory", shell_status=127)
        if not host.is_file() or not os.access(host, os.X_OK):
            raise StartError(f"fork/exec {path}: permission denied")
        return cand, host
    search = env.get("PATH", DEFAULT_PATH)
    candidates = [sprite_abspath(posixpath.join(d or ".", path), cwd) for d in search.split(":")]
    for cand in candidates:
        host = host_path(root, cand)
        if host.is_file() and os.access(host, os.X_OK):
            return cand, host
    raise StartError(f'exec: "{path}": executable file not found in $PATH', shell_status=127)


def bwrap_args(
    root: Path,
    cwd: str,
    *,
    isolate_network: bool = False,
    own_network: bool = False,
    name: str | None = None,
    source: Path | None = None,
) -> list[str]:
    """The bubblewrap command line prefix for one sprite.

    The command runs as the unprivileged ``sprite`` user of a user namespace
    of its own, mapped outside to the emulator's user, or, when the emulator
    runs as root, to the unprivileged ``_sandbox.SANDBOX_HOST_ID`` (the
    caller puts ``_sandbox.root_prefix`` before bubblewrap), with no capabilities, in its own
    PID, IPC, UTS (hostname: the sprite's name) and, where the kernel allows,
    cgroup namespaces, with a generated ``/etc`` (see ``_sandbox.etc_args``).
    The caller starts bubblewrap in a new session of its own, without a
    controlling terminal, so nothing inside can push input into the
    emulator's terminal (``TIOCSTI``); bubblewrap's ``--new-session`` would
    do the same one level down, but would put its inner init in a session
    the emulator's reaping does not know of. A TTY command gets its pty as
    controlling terminal through ``setsid -c`` (see :meth:`SpriteProcess.start`).
    ``isolate_network`` gives it a network namespace of its own with nothing
    but a private loopback (a deny-all network policy); ``own_network`` says
    that the caller runs bubblewrap inside the sprite's network namespace
    (``_netns``), whose DNS server ``/etc/resolv.conf`` must name. ``name`` defaults to
    the sprite directory's name (``root`` is ``<state>/sprites/<name>/root``);
    ``source`` is where bubblewrap finds the sprite directory
    (``_sandbox.root_prefix``; the directory itself by default).
    """
    sprite_dir = root.parent
    name = name or sprite_dir.name
    view = (source or sprite_dir) / "root"
    args = [
        shutil.which("bwrap") or "bwrap",
        "--die-with-parent",
        "--unshare-user",
        "--uid",
        str(SPRITE_UID),
        "--gid",
        str(SPRITE_UID),
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname",
        name[:63] or "sprite",
        "--unshare-cgroup-try",
        *(["--unshare-net"] if isolate_network else []),
        "--cap-drop",
        "ALL",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    for d in _SANDBOX_RO:
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for d in _SANDBOX_LINKS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    own = None if isolate_network else own_network
    args += etc_args(sprite_dir, name, own_network=own, source=source)
    args += ["--bind", str(view / "home"), "/home", "--bind", str(view / "tmp"), "/tmp"]
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(root)):
            if entry in _RESERVED_TOP or entry in ("home", "tmp"):
                continue
            if (root / entry).is_dir() and not (root / entry).is_symlink():
                args += ["--bind", str(view / entry), "/" + entry]
    args += _checkpoints_mount(root, sprite_dir, view.parent)
    args += ["--chdir", cwd]
    return args


def _checkpoints_mount(root: Path, sprite_dir: Path, source: Path) -> list[str]:
    """Checkpoints appear read-only at ``/.sprite/checkpoints`` inside the sprite (section 6)."""
    if not (sprite_dir / "checkpoints").is_dir():
        return []
    platform = root / ".sprite"
    if platform.is_dir() and not platform.is_symlink():
        # Bound read-write from the host above: the mount point must exist
        # there, since the sprite user may not create it.
        try:
            (platform / "checkpoints").mkdir(exist_ok=True)
        except OSError:
            return []
    return ["--ro-bind", str(source / "checkpoints"), "/.sprite/checkpoints"]


def set_winsize(fd: int, cols: int, rows: int) -> None:
    """Apply a terminal size to a pty (the kernel sends SIGWINCH to its foreground group)."""
    cols = max(0, min(65535, cols))
    rows = max(0, min(65535, rows))
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


# --------------------------------------------------------------------------
# The process object


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Stream protocol that also reports the moment the process exits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_READ_SIZE, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pid: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(transport, asyncio.SubprocessTransport):
            self.pid = transport.get_pid()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _spawn(
    program: str, *args: str, **kwargs: Any
) -> tuple[asyncio.subprocess.Process, asyncio.Future[None]]:
    """``create_subprocess_exec`` plus a future for the exit itself.

    The spawn itself is never cancelled halfway. When asyncio cancels
    ``subprocess_exec`` it SIGKILLs the leader alone, then waits until every
    pipe is closed: whatever else already runs in the command's session (a
    shell's child; a sandbox whose outer bwrap died before its inner one
    armed ``--die-with-parent``) keeps the pipes, and the cancelled caller
    hangs as long as it runs, with pipe transports that are never closed if
    the loop ends first. Instead, a cancelled caller leaves at once and the
    spawn, once complete, is discarded by :func:`_discard_spawn`.
    """
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    spawning = asyncio.ensure_future(
        loop.subprocess_exec(lambda: protocol, program, *args, **kwargs)
    )
    try:
        transport, _ = await asyncio.shield(spawning)
    except asyncio.CancelledError:
        _keep(spawning)
        spawning.add_done_callback(functools.partial(_discard_spawn, protocol))
        raise
    return asyncio.subprocess.Process(transport, protocol, loop), protocol.exited


_reapers: set[asyncio.Future[Any]] = set()


def _keep(task: asyncio.Future[Any]) -> None:
    """Hold a reference to a background task until it is done."""
    _reapers.add(task)
    task.add_done_callback(_reapers.discard)


def _discard_spawn(protocol: _Protocol, spawning: asyncio.Future[Any]) -> None:
    """A spawn whose caller was cancelled: kill the command's whole session,
    close the transport (and so its pipes), and reap what the session leaves."""
    if spawning.cancelled() or spawning.exception() is not None:
        return  # nothing started, or asyncio cleaned up after a failure
    transport, _ = spawning.result()
    pid = transport.get_pid()
    if transport.get_returncode() is None:
        # Every command leads its own process group (start_new_session, setsid):
        # the group takes the shell's children and the sandbox's inner processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    transport.close()
    _keep(asyncio.ensure_future(_reap_after(pid, protocol.exited)))


async def _reap_after(pid: int, exited: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(exited), 10.0)
    if exited.done():  # asyncio waited for the leader: its session is ours to reap
        await reap_sessions([pid], gone={pid})


class SpriteProcess:
    """A command running for an exec session, with its output in ``output``.

    Build with :meth:`start`. Output arrives on ``output`` as ``(stream, bytes)``
    with a bounded queue, so a slow consumer (a WebSocket that is not drained)
    stops the reads and, through the pipe, the process: backpressure end to end.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        exited: asyncio.Future[None],
        *,
        sandbox: bool,
        master: int | None,
        stdin: bool,
    ) -> None:
        self.pid = proc.pid
        self.output: asyncio.Queue[OutputItem] = asyncio.Queue(_QUEUE_DEPTH)
        self._proc = proc
        self._exited = exited
        self._sandbox = sandbox
        self._master = master
        self._stdin_open = stdin
        self._exit: int | None = None
        self._terminated = False
        self._readers: list[asyncio.Task[None]] = []
        self._finisher: asyncio.Task[None] | None = None
        # Sessions inside the sandbox (bubblewrap's PID-1 child starts its
        # own): their processes are reparented to us when the outer bwrap
        # dies, and must be reaped by their session id, not ours.
        self._inner_sids: set[int] = set()
        self._write_lock = asyncio.Lock()

    @classmethod
    async def start(
        cls,
        root: Path,
        spec: ProcSpec,
        *,
        sandbox: bool,
        isolate_network: bool = False,
        jail: Jail | None = None,
    ) -> SpriteProcess:
        """Spawn ``spec`` for the sprite whose ``/`` is ``root``.

        ``isolate_network`` (bubblewrap only) runs it without any network
        but a private loopback; callers decide it from the sprite's policy.
        ``jail`` (bubblewrap only) puts it under the sprite's resource limits.
        """
        if isolate_network and not sandbox:
            raise ValueError("network isolation needs the bubblewrap sandbox")
        enable_subreaper()
        env = build_env(spec.env, tty=spec.tty, root=root, sandbox=sandbox)
        cwd = sprite_abspath(spec.dir or SPRITE_HOME)
        host_cwd = host_path(root, cwd)
        if not host_cwd.is_dir():
            raise StartError(f"chdir {cwd}: no such file or directory")
        _, host_exe = resolve_executable(root, spec.path, env, cwd)
        argv = list(spec.argv) or [spec.path]
        setsid = shutil.which("setsid") or "/usr/bin/setsid"

        if sandbox:
            # argv[0] becomes ``path`` inside bwrap (0.8 has no --argv0); path = cmd[0] normally.
            inner = [spec.path, *argv[1:]]
            if spec.env and "PWD" not in env:
                # bwrap always exports PWD; a caller-given env must arrive untouched.
                inner = ["/usr/bin/env", "-u", "PWD", "--", *inner]
            if spec.tty:
                # The command must lead its own session with the pty as controlling terminal.
                inner = ["/usr/bin/setsid", "-c", *inner]
            sprite = root.parent.name
            network = None
            if jail is not None and not isolate_network:
                try:
                    network = await jail.network(sprite)
                except NetworkUnavailable as exc:
                    raise StartError(f"the sprite's network is unavailable: {exc}") from exc
            as_root, source = root_prefix(root.parent)
            prefix = bwrap_args(
                root,
                cwd,
                isolate_network=isolate_network,
                own_network=network is not None,
                source=source,
            )
            prefix = [*as_root, *prefix]
            if network is not None:
                prefix = [*network.enter_args(), *prefix]
            if jail is not None:
                prefix = [*jail.limit_prefix(sprite), *prefix]
            program, args, executable = prefix[0], [*prefix[1:], "--", *inner], None
            run_cwd: str | None = None
            new_session = True
        elif spec.tty:
            program, args, executable = setsid, ["-c", str(host_exe), *argv[1:]], None
            run_cwd = str(host_cwd)
            # setsid(1) only skips its extra fork when it is not already a group leader.
            new_session = False
        else:
            program, args, executable = argv[0], argv[1:], str(host_exe)
            run_cwd = str(host_cwd)
            new_session = True

        master: int | None = None
        slave: int | None = None
        try:
            if spec.tty:
                master, slave = os.openpty()
                set_winsize(slave, spec.cols or 80, spec.rows or 24)
                os.set_blocking(master, False)
                proc, exited = await _spawn(
                    program,
                    *args,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=run_cwd,
                    env=env,
                    start_new_session=new_session,
                )
            else:
                proc, exited = await _spawn(
                    program,
                    *args,
                    executable=executable,
                    stdin=asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=run_cwd,
                    env=env,
                    start_new_session=new_session,
                )
        except BaseException as exc:  # cancelled too: the pty is nobody's then
            if master is not None:
                os.close(master)
            if isinstance(exc, OSError):
                status = 127 if isinstance(exc, FileNotFoundError) else 126
                raise StartError(str(exc), shell_status=status) from exc
            raise
        finally:
            if slave is not None:
                os.close(slave)
        self = cls(proc, exited, sandbox=sandbox, master=master, stdin=spec.stdin or spec.tty)
        self._start_readers()
        if sandbox:
            # The inner sessions exist a moment after the spawn; note them
            # then, so that they are known even if the outer bwrap is gone by
            # the time the session is torn down.
            asyncio.get_running_loop().call_later(0.05, self._note_inner_sessions)
        return self

    # -- output

    def _start_readers(self) -> None:
        if self._master is not None:
            self._readers.append(asyncio.ensure_future(self._read_pty(self._master)))
        else:
            assert self._proc.stdout is not None
            assert self._proc.stderr is not None
            self._readers.append(
                asyncio.ensure_future(self._read_pipe(self._proc.stdout, STREAM_STDOUT))
            )
            self._readers.append(
                asyncio.ensure_future(self._read_pipe(self._proc.stderr, STREAM_STDERR))
            )
        self._finisher = asyncio.ensure_future(self._finish())

    async def _read_pipe(self, reader: asyncio.StreamReader, stream: int) -> None:
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            await self.output.put((stream, data))

    async def _read_pty(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                ready = loop.create_future()

                def _wake(fut: asyncio.Future[None] = ready) -> None:
                    if not fut.done():
                        fut.set_result(None)

                loop.add_reader(fd, _wake)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                continue
            except OSError:
                # EIO: every slave descriptor is closed, the terminal is gone.
                return
            if not data:
                return
            await self.output.put((STREAM_STDOUT, data))

    async def _finish(self) -> None:
        """After the command exits: drain output, kill leftovers, then signal end of output."""
        await self.wait()
        rc = self._proc.returncode
        if rc is not None and rc < 0:
            # Killed by a signal (SIGKILL to the group: a kill, an expiry). The
            # processes under it died too, and any whose parent went first were
            # reparented to us (the subreaper): reap them, or they stay zombies.
            await reap_sessions(self._sids(), gone={self.pid})
        readers = asyncio.gather(*self._readers)
        try:
            await asyncio.wait_for(asyncio.shield(readers), _LEFTOVER_GRACE)
        except asyncio.TimeoutError:
            # Background children still hold the pipes/pty: the session ends with its command.
            reap_members(self._sids(), gone={self.pid})
            await readers
        await self.output.put(None)

    def _sids(self) -> list[int]:
        return [self.pid, *self._inner_sids]

    def _note_inner_sessions(self) -> None:
        """Remember the session ids of the sandbox's first two generations."""
        if not self._sandbox or self._proc.returncode is not None:
            return
        level = [self.pid]
        for _ in range(2):
            children: list[int] = []
            for pid in level:
                try:
                    with open(f"/proc/{pid}/task/{pid}/children") as f:
                        children += [int(c) for c in f.read().split()]
                except (OSError, ValueError):
                    continue
            for child in children:
                info = _read_stat(child)
                if info is not None and info.sid != self.pid:
                    self._inner_sids.add(info.sid)
            level = children

    # -- input

    async def write_stdin(self, data: bytes) -> None:
        """Write to the pipe or pty; silently dropped after EOF or exit."""
        if not self._stdin_open or not data:
            return
        async with self._write_lock:
            if self._master is not None:
                await self._write_pty(self._master, data)
                return
            pipe = self._proc.stdin
            if pipe is None or pipe.is_closing():
                return
            try:
                pipe.write(data)
                await pipe.drain()
            except (BrokenPipeError, ConnectionResetError):
                self._stdin_open = False

    async def _write_pty(self, fd: int, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                ready = loop.create_future()

                def _wake(fut: asyncio.Future[None] = ready) -> None:
                    if not fut.done():
                        fut.set_result(None)

                loop.add_writer(fd, _wake)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
                continue
            except OSError:
                return
            view = view[n:]

    def close_stdin(self) -> None:
        """EOF on the stdin pipe; a pty has no EOF of its own (Ctrl-D is data)."""
        if self._master is not None:
            return
        self._stdin_open = False
        pipe = self._proc.stdin
        if pipe is not None and not pipe.is_closing():
            pipe.close()

    def resize(self, cols: int, rows: int) -> None:
        """Set the pty size."""
        if self._master is not None and self._exit is None:
            set_winsize(self._master, cols, rows)

    # -- signals and lifetime

    async def send_signal(self, sig: int) -> bool:
        """Signal the command's process group (inside the sandbox: the command's group)."""
        if self._exit is not None:
            return False
        if not self._sandbox or sig == signal.SIGKILL:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return False
            return True
        # Outer bwrap dies on most signals without forwarding them and its inner
        # init ignores them, so signal the command's own group directly.
        for _ in range(100):
            table = proc_table()
            inits = [p for p in descendants(table, self.pid) if table[p].ppid == self.pid]
            inner = descendants(table, inits[0]) if inits else []
            commands = [p for p in inner if table[p].ppid == inits[0]] if inits else []
            if commands:
                group = table[commands[0]].pgid
                targets = [p for p in inner if table[p].pgid == group]
                for pid in targets:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                return True
            if self._proc.returncode is not None:
                return False
            await asyncio.sleep(0.005)
        return False

    def kill(self) -> None:
        """SIGKILL the whole group; under bubblewrap that takes the PID namespace with it."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        """Exit byte of the command (bubblewrap already reports 128+N for signals)."""
        if self._exit is None:
            # Not Process.wait(): on 3.11 it also waits for the pipes to close,
            # which background children can hold open indefinitely.
            await asyncio.shield(self._exited)
            rc = self._proc.returncode
            assert rc is not None
            self._exit = exit_status(rc)
        return self._exit

    async def terminate(self) -> None:
        """SIGKILL the whole session, wait for it, reap leftovers, release descriptors."""
        if self._terminated:
            return
        self._terminated = True
        self._note_inner_sessions()
        self.kill()
        await self.wait()
        # Our own session's leader was just waited for by asyncio.
        reaped = asyncio.ensure_future(reap_sessions(self._sids(), gone={self.pid}))
        if self._finisher is not None:
            # Nobody may be consuming output any more: drain it so the finisher can end.
            while not self._finisher.done():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.output.get_nowait()
                await asyncio.sleep(0.001)
            await self._finisher
        await reaped
        self._release()

    def _release(self) -> None:
        if self._master is not None:
            os.close(self._master)
            self._master = None
        pipe = self._proc.stdin
        if pipe is not None and not pipe.is_closing():
            pipe.close()
        transport = getattr(self._proc, "_transport", None)
        if transport is not None:
            transport.close()


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3] != b"Z"
