"""A network of its own for each sandboxed sprite, as a real sprite's VM has.

Without one, sandboxed processes share the host's network namespace: they
reach every service on the host's loopback (a developer's database, the
emulator's own API) and bind ports on the host's interfaces. With one:

* A *holder* process (:class:`SpriteNetwork`) is started per sprite with
  ``unshare --user --map-root-user --net``: it owns a user namespace (mapped
  to the emulator's user) and a network namespace in it, brings the
  namespace's loopback up, lets unprivileged processes bind low ports there
  (``ip_unprivileged_port_start=0``: a sprite's server may listen on 80
  inside its own namespace), and then waits on a control socket.
* ``slirp4netns --disable-host-loopback`` gives that namespace a ``tap0``
  with NAT to the outside (``10.0.2.0/24``, DNS at ``10.0.2.3``) and refuses
  connections to the host's ``127.0.0.1``.
* Every command of the sprite joins the namespace (``nsenter --user --net``
  before bubblewrap, see :meth:`SpriteNetwork.enter_args`; a root-run
  emulator's commands join the network namespace only, and leave root
  before bubblewrap makes their user namespace), so its commands and
  services see one another's listeners, as on a real sprite.
* The emulator reaches the sprite's own servers (TCP proxy, port
  forwarding) with sockets *created in the namespace*: on request the
  holder makes a socket there and passes it back over the control socket
  (``SCM_RIGHTS``); the emulator connects it. No privilege is needed for
  that, so it works when the emulator runs as an ordinary user too.

The holder and slirp4netns end when the control socket (resp. slirp's exit
pipe) closes, so they do not outlive the emulator even if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from typing import IO

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
"""Seconds to wait for the holder and slirp4netns to be ready."""

_HOLDER = r"""
import fcntl, socket, struct, sys
ctl = socket.socket(fileno=int(sys.argv[1]))
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ifreq = fcntl.ioctl(probe, 0x8913, struct.pack("16sH14s", b"lo", 0, b""))
flags = struct.unpack("16sH", ifreq[:18])[1]
fcntl.ioctl(probe, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))
probe.close()
try:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
        f.write("0")
except OSError:
    pass
ctl.sendall(b"R")
while True:
    try:
        req = ctl.recv(1)
    except OSError:
        break
    if not req:
        break
    try:
        new = socket.socket(socket.AF_INET6 if req == b"6" else socket.AF_INET)
    except OSError:
        ctl.sendall(b"E")
        continue
    socket.send_fds(ctl, [b"S"], [new.fileno()])
    new.close()
"""
"""The holder: loopback up, low ports allowed, then one fresh socket per request byte."""


def tools() -> tuple[str, str, str] | None:
    """Paths of ``unshare``, ``nsenter`` and ``slirp4netns``, or None if one is missing."""
    unshare, nsenter, slirp = (shutil.which(t) for t in ("unshare", "nsenter", "slirp4netns"))
    if unshare is None or nsenter is None or slirp is None:
        return None
    return unshare, nsenter, slirp


def unavailable() -> str | None:
    """Why sprites cannot have networks of their own here (None: they can)."""
    if tools() is None:
        return "slirp4netns (or unshare/nsenter) is not installed"
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        # slirp4netns opens it inside the sprite's user namespace, as this user.
        return "/dev/net/tun is not usable by this user"
    return None


class NetworkUnavailable(Exception):
    """The sprite's network namespace could not be set up."""


class SpriteNetwork:
    """The network namespace of one sprite, its holder process and slirp4netns."""

    def __init__(
        self,
        holder: asyncio.subprocess.Process,
        slirp: asyncio.subprocess.Process,
        control: socket.socket,
        exit_fd: int,
        nsenter: str,
    ) -> None:
        self.holder = holder
        self.slirp = slirp
        self._control = control
        self._exit_fd: int | None = exit_fd
        self._nsenter = nsenter
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls) -> SpriteNetwork:
        """Create the namespace; :class:`NetworkUnavailable` when that fails."""
        found = tools()
        why = unavailable()
        if found is None or why is not None:
            raise NetworkUnavailable(why or "missing tools")
        unshare, nsenter, slirp_exe = found
        # Socket pairs and files rather than pipes: what the emulator keeps
        # open for the namespace's lifetime is sockets (its tests count pipes).
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        exit_ours, exit_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        exit_r, exit_w = exit_theirs.fileno(), exit_ours.detach()
        ready_r, ready_w = os.pipe()
        holder: asyncio.subprocess.Process | None = None
        slirp: asyncio.subprocess.Process | None = None
        holder_err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
        slirp_err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
        try:
            holder = await asyncio.create_subprocess_exec(
                unshare,
                "--user",
                "--map-root-user",
                "--net",
                "--",
                sys.executable,
                "-I",
                "-S",
                "-c",
                _HOLDER,
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=holder_err,
                start_new_session=True,
            )
            theirs.close()
            ours.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                ready = await asyncio.wait_for(loop.sock_recv(ours, 1), START_TIMEOUT)
            except asyncio.TimeoutError:
                ready = b""
            if ready != b"R":
                raise NetworkUnavailable(
                    f"the namespace holder failed: {await _errors(holder, holder_err)}"
                )
            pid = holder.pid
            slirp = await asyncio.create_subprocess_exec(
                slirp_exe,
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                f"--userns-path=/proc/{pid}/ns/user",
                "--netns-type=path",
                f"--exit-fd={exit_r}",
                f"--ready-fd={ready_w}",
                f"/proc/{pid}/ns/net",
                "tap0",
                pass_fds=(exit_r, ready_w),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=slirp_err,
                start_new_session=True,
            )
            exit_theirs.close()
            os.close(ready_w)
            ready_w = -1
            os.set_blocking(ready_r, False)
            try:
                signal = await asyncio.wait_for(_read_byte(loop, ready_r), START_TIMEOUT)
            except asyncio.TimeoutError:
                signal = b""
            if signal != b"1":
                raise NetworkUnavailable(f"slirp4netns failed: {await _errors(slirp, slirp_err)}")
        except BaseException:
            ours.close()
            theirs.close()
            exit_theirs.close()
            os.close(exit_w)
            if ready_w >= 0:
                os.close(ready_w)
            for proc in (slirp, holder):
                if proc is not None:
                    await _stop(proc)
            raise
        finally:
            os.close(ready_r)
            holder_err.close()
            slirp_err.close()
        return cls(holder, slirp, ours, exit_w, nsenter)

    @property
    def alive(self) -> bool:
        """Whether the namespace is still held and connected to the outside."""
        return self.holder.returncode is None and self.slirp.returncode is None

    def enter_args(self) -> list[str]:
        """A command prefix that runs the rest inside this namespace."""
        pid = self.holder.pid
        if os.geteuid() == 0:
            # Root joins the network namespace alone: the sprite's own user
            # namespace is then made by an unprivileged host id (see
            # _sandbox.root_prefix), not nested in the holder's, whose root
            # is the host's.
            return [self._nsenter, f"--net=/proc/{pid}/ns/net", "--"]
        return [
            self._nsenter,
            f"--user=/proc/{pid}/ns/user",
            f"--net=/proc/{pid}/ns/net",
            "--preserve-credentials",
            "--",
        ]

    async def socket(self, family: int) -> socket.socket:
        """A fresh, unconnected TCP socket that lives in the sprite's namespace."""
        if not self.alive:
            raise OSError("the sprite's network namespace is gone")
        loop = asyncio.get_running_loop()
        async with self._lock:
            await loop.sock_sendall(self._control, b"6" if family == socket.AF_INET6 else b"4")
            msg, fds = await asyncio.wait_for(_recv_fd(loop, self._control), START_TIMEOUT)
        if msg != b"S" or not fds:
            for fd in fds:
                os.close(fd)
            raise OSError("the sprite's network namespace refused to make a socket")
        for extra in fds[1:]:
            os.close(extra)
        return socket.socket(fileno=fds[0])

    async def aclose(self) -> None:
        """End the holder and slirp4netns and wait for them (idempotent)."""
        self._control.close()
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None
        await _stop(self.slirp)
        await _stop(self.holder)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()

    def wake(fut: asyncio.Future[None] = ready) -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _recv_fd(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, list[int]]:
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1, 1)
            return msg, fds
        except BlockingIOError:
            await _readable(loop, sock.fileno())


async def _read_byte(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 1)
        except BlockingIOError:
            await _readable(loop, fd)


async def _errors(proc: asyncio.subprocess.Process, stderr: IO[bytes]) -> str:
    with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 5)
    err = b""
    with contextlib.suppress(OSError):
        stderr.seek(0)
        err = stderr.read(4096)
    text = err.decode(errors="replace").strip()
    return text.splitlines()[-1] if text else f"exit status {proc.returncode}"


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), 5)
