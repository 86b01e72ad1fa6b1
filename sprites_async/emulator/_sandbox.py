"""What holds a sprite's processes in: privileges, ``/etc``, limits, status.

The bubblewrap command line itself is built in ``_procs``; this module
provides the parts around it, per emulator (:func:`jail_for`):

* a minimal ``/etc`` per sprite (:func:`etc_args`), generated into the
  sprite's state directory, outside the root the sprite can write, bound
  read-only, with
  ``passwd``/``group`` naming ``root`` and the unprivileged ``sprite`` user
  (:data:`SPRITE_UID`), ``hosts``/``hostname`` naming the sprite, and only
  the host files programs need to run (CA certificates, the dynamic linker's
  cache, ``alternatives`` links, time zone...), never ``shadow``, ``sudoers``
  or SSH keys;
* the host identity of the ``sprite`` user (:func:`sprite_host_ids`): when
  the emulator runs as root, sprite commands leave root for
  :data:`SANDBOX_HOST_ID` before bubblewrap (:func:`root_prefix`), so the
  sprite is an unprivileged host user that owns none of the host's files,
  and the emulator gives it the files it makes for the sprite
  (:func:`give_to_sprite`);
* resource limits (:class:`Limits`): a cgroup per sprite (``pids.max``,
  ``memory.max``, ``cpu.max``, or their cgroup v1 names) when the machine
  lets the emulator create cgroups (root, as CI runs), else ``RLIMIT_NPROC``
  and ``RLIMIT_DATA`` on each command (weaker, see :meth:`Jail.describe`);
* the status line every front end prints (:func:`sandbox_status`), so that
  running without a sandbox is never silent.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._netns import NetworkUnavailable, SpriteNetwork
from ._netns import unavailable as network_unavailable

if TYPE_CHECKING:
    from ._state import EmulatorState

log = logging.getLogger(__name__)

SPRITE_UID = 1000
"""The uid (and gid) of the ``sprite`` user that commands run as inside the sandbox."""
SPRITE_USER = "sprite"

SANDBOX_HOST_ID = 2_000_000_000 + SPRITE_UID
"""Host uid and gid of the ``sprite`` user when the emulator runs as root.

A root-started user namespace would map the sprite user to the host's uid 0:
without capabilities, but the owner of every root-owned file it can reach
(the device nodes bubblewrap binds into ``/dev``, anything bound
read-write), and uid 0 should it ever leave its namespaces. This id is far
above regular users (1000-60000), systemd's dynamic users and the
``/etc/subuid`` ranges tools allocate from 100000, and below ``2**31``,
which some tools cannot handle. Every sandboxed sprite of every root-run
emulator on the machine shares it; they cannot see one another's processes
(PID namespaces) nor files (mount namespaces).
"""

_HOST_ETC = (
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "protocols",
    "services",
    "mime.types",
    "gai.conf",
    "host.conf",
    "os-release",
    "debian_version",
    "profile",
    "profile.d",
    "bash.bashrc",
    "inputrc",
    "terminfo",
    "gitconfig",
    "python3",
    "python3.11",
    "python3.12",
    "python3.13",
)
"""Host ``/etc`` entries a sprite sees (copies); everything else of the host's is absent."""

_GENERATED = ("passwd", "group", "hosts", "hostname", "nsswitch.conf", "resolv.conf")
_ETC_VERSION = "1"


class SandboxUnavailable(ValueError):
    """``sandbox="required"`` (or ``"bwrap"``) but bubblewrap cannot run here."""


# --------------------------------------------------------------------------
# Is bubblewrap usable?

_probe: tuple[bool, str] | None = None


def probe_bwrap() -> tuple[bool, str]:
    """``(usable, reason)``: whether ``bwrap`` exists and can make a user namespace.

    Run once per process: a missing binary, or a kernel or security module
    that refuses unprivileged user namespaces, would otherwise fail every
    command.
    """
    global _probe
    if _probe is not None:
        return _probe
    exe = shutil.which("bwrap")
    if exe is None:
        _probe = (False, "bubblewrap (bwrap) is not installed")
        return _probe
    if os.geteuid() == 0:
        missing = [t for t in ("setpriv", "unshare", "mount") if shutil.which(t) is None]
        if missing:
            # Needed to leave root (root_prefix); sprites would be the host's root otherwise.
            _probe = (False, f"{', '.join(missing)} (util-linux) not installed")
            return _probe
    try:
        # As sprite commands run it: as root, after leaving root (drop_args).
        done = subprocess.run(
            [
                *drop_args(),
                exe,
                "--unshare-user",
                "--uid",
                str(SPRITE_UID),
                "--ro-bind",
                "/",
                "/",
                "true",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _probe = (False, f"bwrap does not run: {exc}")
        return _probe
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        _probe = (False, f"bwrap cannot create a user namespace: {err[-1] if err else '?'}")
        return _probe
    _probe = (True, "")
    return _probe


def sandboxed(mode: str) -> bool:
    """Whether sprite commands run under bubblewrap with ``EmulatorConfig.sandbox`` = ``mode``."""
    if mode in ("bwrap", "required"):
        return True
    return mode == "auto" and probe_bwrap()[0]


def sprite_host_ids() -> tuple[int, int]:
    """Host ``(uid, gid)`` of a sandboxed sprite's ``sprite`` user.

    :data:`SANDBOX_HOST_ID` when the emulator runs as root; otherwise the
    emulator's own user, which is no more than that user already has.
    """
    if os.geteuid() == 0:
        return SANDBOX_HOST_ID, SANDBOX_HOST_ID
    return os.geteuid(), os.getegid()


def drop_args() -> list[str]:
    """A command prefix leaving root for :data:`SANDBOX_HOST_ID` (empty when not root).

    Placed after what needs root (joining the sprite's cgroups) and before
    the namespaces are entered or made: the user namespaces of the sprite are
    then created and owned by that unprivileged id, exactly as when an
    ordinary user runs the emulator. Supplementary groups (root's) are
    dropped too.
    """
    if os.geteuid() != 0:
        return []
    return [
        shutil.which("setpriv") or "setpriv",
        f"--reuid={SANDBOX_HOST_ID}",
        f"--regid={SANDBOX_HOST_ID}",
        "--clear-groups",
        "--",
    ]


_VIEW = (
    'mount -n --bind -- "$1" "$2" || '
    '{ echo "sprite sandbox: cannot bind $1" >&2; exit 126; }; shift 2; exec "$@"'
)
"""Binds the sprite's directory on the view (in a fresh mount namespace), then runs the rest."""

_view: str | None = None


def _view_dir() -> str:
    global _view
    if _view is None:
        # Private to root (mkdtemp), only searchable by others: no one can
        # swap it for a symlink that would redirect the bind mount.
        _view = tempfile.mkdtemp(prefix="sprites-emulator-view-")
        os.chmod(_view, 0o711)
        atexit.register(_remove_view, _view)
    return _view


def _remove_view(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def root_prefix(sprite_dir: Path) -> tuple[list[str], Path]:
    """A command prefix for a root-run emulator, and where bubblewrap finds ``sprite_dir``.

    Not root: nothing, and ``sprite_dir`` itself. As root, the sprite's
    directory may lie below directories only root may search (a ``0700``
    state or pytest directory), which bubblewrap, run as
    :data:`SANDBOX_HOST_ID`, could not reach: the command gets a mount
    namespace of its own (made while still root) in which the sprite's
    directory is bind-mounted on a searchable, empty directory, the *view*,
    then leaves root (:func:`drop_args`). The host's mount table is untouched.
    """
    if os.geteuid() != 0:
        return [], sprite_dir
    view = _view_dir()
    unshare = shutil.which("unshare") or "unshare"
    sh = shutil.which("sh") or "/bin/sh"
    prefix = [unshare, "--mount", "--propagation", "private", "--", sh, "-c", _VIEW, "sh"]
    return [*prefix, str(sprite_dir), view, *drop_args()], Path(view)


def file_owner(mode: str) -> tuple[int, int] | None:
    """Host ``(uid, gid)`` to give what the emulator creates for a sprite, or None.

    None when nothing needs changing: the emulator is not root (its files
    are already the sprite user's), or commands run unsandboxed (as root).
    """
    if os.geteuid() != 0 or not sandboxed(mode):
        return None
    return SANDBOX_HOST_ID, SANDBOX_HOST_ID


def give_to_sprite(path: str | os.PathLike[str], owner: tuple[int, int] | None) -> None:
    """``lchown`` a file or directory the emulator just made for the sprite (no-op for None).

    ``lchown`` so that a symlink swapped in by a process of the sprite is
    never followed out of its tree.
    """
    if owner is not None:
        os.lchown(path, *owner)


def prepare_root(root: Path, owner: tuple[int, int] | None) -> None:
    """Create the sprite's ``/home/sprite`` and ``/tmp`` if missing.

    With ``owner``, a new ``/home/sprite`` is given to the sprite user and a
    new ``/tmp`` is world-writable and sticky (``1777``), as on a sprite; an
    existing one is left as it is (an explicit ``chown`` stays).
    """
    home, tmp = root / "home" / "sprite", root / "tmp"
    (root / "home").mkdir(parents=True, exist_ok=True)
    if owner is not None:
        # Bubblewrap reaches them as the sprite's host id (root_prefix), whatever the umask.
        for d in (root.parent, root, root / "home"):
            os.chmod(d, 0o755)
    for d in (home, tmp):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        if owner is None:
            continue
        if d is home:
            give_to_sprite(d, owner)
        else:
            os.chmod(d, 0o1777)


def check_mode(mode: str) -> None:
    """Refuse an unknown mode, and ``required``/``bwrap`` where bubblewrap cannot run."""
    if mode not in ("auto", "bwrap", "none", "required"):
        raise ValueError(f"sandbox must be auto, required, bwrap or none, not {mode!r}")
    if mode in ("required", "bwrap"):
        ok, reason = probe_bwrap()
        if not ok:
            raise SandboxUnavailable(
                f"sandbox={mode!r} but {reason}; install bubblewrap (apt-get install "
                "bubblewrap) or pass sandbox='none' to run sprite commands unsandboxed"
            )


def host_user() -> str:
    """The user the emulator (and so an unsandboxed command) runs as, e.g. ``root (uid 0)``."""
    uid = os.geteuid()
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        name = "?"
    return f"{name} (uid {uid})"


# --------------------------------------------------------------------------
# /etc


def _hostname(name: str) -> str:
    # HOST_NAME_MAX is 64; sprite names are usually far shorter.
    return name[:63] or "sprite"


_copied: set[Path] = set()
"""``/etc`` directories whose host copies this process made (fresh once per emulator run)."""


def etc_args(
    sprite_dir: Path, name: str, *, own_network: bool | None, source: Path | None = None
) -> list[str]:
    """bubblewrap arguments giving the sprite its generated ``/etc`` (written if needed).

    The directory holds the generated files and copies of the host entries
    of :data:`_HOST_ETC`: one bind mount for all of them, where a bind
    mount per host entry would cost bubblewrap milliseconds per command.
    The copies are refreshed once per emulator run. ``own_network`` chooses
    the DNS server of ``resolv.conf`` (``None``: keep the current one, for a
    command without any network). ``source`` is where bubblewrap finds
    ``sprite_dir`` (see :func:`root_prefix`).
    """
    etc = sprite_dir / "etc"
    if etc not in _copied:
        _copy_host_etc(etc)
        _copied.add(etc)
    stamp = etc / ".sprites-emulator"
    try:
        current = stamp.read_text()
    except OSError:
        current = ""
    if own_network is None:
        own_network = current.endswith(" True\n")
    wanted = f"{_ETC_VERSION} {name} {own_network}\n"
    if current != wanted:
        _write_etc(etc, name, own_network=own_network)
        stamp.write_text(wanted)
    return ["--ro-bind", str((source or sprite_dir) / "etc"), "/etc"]


def _copy_host_etc(etc: Path) -> None:
    etc.mkdir(parents=True, exist_ok=True)
    os.chmod(etc, 0o755)  # bound by bubblewrap as the sprite's host id when root
    for entry in _HOST_ETC:
        host = Path("/etc") / entry
        copy = etc / entry
        with contextlib.suppress(FileNotFoundError):
            if copy.is_dir() and not copy.is_symlink():
                shutil.rmtree(copy)
            else:
                copy.unlink()
        try:
            if host.is_dir():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(host, copy, symlinks=True, ignore_dangling_symlinks=True)
            elif host.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(host, copy)
                os.chmod(copy, 0o644)
        except OSError as exc:
            log.debug("not copying %s into a sprite's /etc: %s", host, exc)


def _write_etc(etc: Path, name: str, *, own_network: bool) -> None:
    hostname = _hostname(name)
    etc.mkdir(parents=True, exist_ok=True)
    files = {
        "passwd": (
            "root:x:0:0:root:/root:/bin/bash\n"
            f"{SPRITE_USER}:x:{SPRITE_UID}:{SPRITE_UID}:{SPRITE_USER}:/home/sprite:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": (f"root:x:0:\n{SPRITE_USER}:x:{SPRITE_UID}:\nnogroup:x:65534:\n"),
        "hosts": (
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
        "hostname": f"{hostname}\n",
        "nsswitch.conf": (
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
            "networks: files\nprotocols: files\nservices: files\n"
        ),
        "resolv.conf": _resolv_conf(own_network),
    }
    for fname, text in files.items():
        tmp = etc / f".{fname}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, etc / fname)


def _resolv_conf(own_network: bool) -> str:
    if own_network:
        # slirp4netns's built-in DNS forwarder.
        return "nameserver 10.0.2.3\n"
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------------
# Limits


@dataclass(frozen=True)
class Limits:
    """Per-sprite resource limits (``None``: no limit)."""

    max_processes: int | None = 512
    memory: int | None = 4 << 30
    """Bytes."""
    cpus: float | None = None
    """CPU time as a number of cores (``0.5``: half a core)."""


@dataclass
class _Controller:
    """One cgroup controller's directory for this emulator's sprites."""

    name: str
    base: Path
    files: dict[str, str] = field(default_factory=dict)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """``(mount point, fstype, super options)`` of cgroup file systems."""
    out: list[tuple[str, str, set[str]]] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] in ("cgroup", "cgroup2"):
            out.append((fields[4], rfields[0], set(rfields[2].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """Controller (``""`` for v2) → this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


_TAG = "sprites-emulator-"


def _sweep(parent: Path) -> None:
    """Remove empty cgroups left by emulators that are gone (killed before cleaning up)."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            pid = entry.name[len(_TAG) :].split("-", 1)[0]
            if not entry.name.startswith(_TAG) or not pid.isdigit():
                continue
            if Path(f"/proc/{pid}").exists():
                continue  # alive, or a new process with that pid: leave it
            with contextlib.suppress(OSError):
                for child in entry.iterdir():
                    if child.is_dir():
                        child.rmdir()
                entry.rmdir()


def _writable_dir(parent: Path, name: str) -> Path | None:
    _sweep(parent)
    target = parent / name
    try:
        target.mkdir()
    except FileExistsError:
        pass
    except OSError:
        return None
    return target


class Cgroups:
    """The cgroup directories this emulator may create sprite cgroups in (maybe none)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.version = 0
        self.controllers: list[_Controller] = []
        self._tag = f"{_TAG}{os.getpid()}-{id(self):x}"
        self._sprites: dict[str, list[Path]] = {}
        wanted = self._wanted()
        if wanted:
            with contextlib.suppress(OSError, ValueError):
                self._find(wanted)

    def _wanted(self) -> dict[str, dict[str, str]]:
        """Controller → the limit files to write, in v2 names."""
        lim = self.limits
        out: dict[str, dict[str, str]] = {}
        if lim.max_processes is not None:
            out["pids"] = {"pids.max": str(lim.max_processes)}
        if lim.memory is not None:
            out["memory"] = {"memory.max": str(lim.memory), "memory.swap.max": "0"}
        if lim.cpus is not None:
            out["cpu"] = {"cpu.max": f"{int(lim.cpus * 100_000)} 100000"}
        return out

    def _find(self, wanted: dict[str, dict[str, str]]) -> None:
        mounts = _mounts()
        own = _own_cgroups()
        v2 = [m for m in mounts if m[1] == "cgroup2"]
        # cgroup v2: a directory whose children may use the controllers. Our
        # own cgroup normally holds processes (no internal processes allowed
        # with controllers), so the hierarchy's root is the usual candidate.
        for point, _, _ in v2:
            candidates = [Path(point) / own.get("", "/").lstrip("/"), Path(point)]
            for parent in candidates:
                try:
                    enabled = set((parent / "cgroup.subtree_control").read_text().split())
                except OSError:
                    continue
                if "pids" not in enabled or "pids" not in wanted:
                    continue
                base = _writable_dir(parent, self._tag)
                if base is None:
                    continue
                usable = [c for c in wanted if c in enabled]
                with contextlib.suppress(OSError):
                    (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in usable))
                self.version = 2
                self.controllers = [_Controller(c, base, wanted[c]) for c in usable]
                return
        # cgroup v1: one hierarchy per controller, under our own cgroup there.
        names = {"pids": "pids", "memory": "memory", "cpu": "cpu"}
        v1_files = {
            "pids": lambda f: {"pids.max": f["pids.max"]},
            "memory": lambda f: {"memory.limit_in_bytes": f["memory.max"]},
            "cpu": lambda f: {
                "cpu.cfs_period_us": "100000",
                "cpu.cfs_quota_us": f["cpu.max"].split()[0],
            },
        }
        found: list[_Controller] = []
        for controller, files in wanted.items():
            for point, kind, options in mounts:
                if kind != "cgroup" or names[controller] not in options:
                    continue
                parent = Path(point) / own.get(controller, "/").lstrip("/")
                base = _writable_dir(parent, self._tag)
                if base is not None:
                    found.append(_Controller(controller, base, v1_files[controller](files)))
                break
        if found:
            # Warm sprites are frozen (``_lifecycle``): v1 has a hierarchy for it.
            for point, kind, options in mounts:
                if kind == "cgroup" and "freezer" in options:
                    parent = Path(point) / own.get("freezer", "/").lstrip("/")
                    base = _writable_dir(parent, self._tag)
                    if base is not None:
                        found.append(_Controller("freezer", base, {}))
                    break
        if any(c.name == "pids" for c in found) or "pids" not in wanted:
            self.version = 1 if found else 0
            self.controllers = found
        else:
            for c in found:
                with contextlib.suppress(OSError):
                    c.base.rmdir()

    @property
    def active(self) -> bool:
        """Whether sprites get cgroups (with at least the process limit)."""
        return bool(self.controllers)

    @property
    def can_freeze(self) -> bool:
        """Whether a warm sprite can be frozen whole (v2 ``cgroup.freeze`` or v1 ``freezer``)."""
        if self.version == 2:
            return bool(self.controllers)
        return any(c.name == "freezer" for c in self.controllers)

    def procs_files(self, sprite: str) -> list[str]:
        """The ``cgroup.procs`` files a new process of ``sprite`` must join (created now)."""
        dirs = self._sprites.get(sprite)
        if dirs is not None and not all(d.is_dir() for d in dirs):
            dirs = None  # removed behind our back: make them again
        if dirs is None:
            dirs = []
            for c in self.controllers:
                d = c.base / _safe(sprite)
                if d not in dirs:
                    d.mkdir(exist_ok=True)
                    dirs.append(d)
                for fname, value in c.files.items():
                    try:
                        (d / fname).write_text(value)
                    except OSError as exc:
                        # memory.swap.max is absent without swap accounting.
                        if fname != "memory.swap.max":
                            log.warning("cgroup %s: cannot set %s: %s", d, fname, exc)
            self._sprites[sprite] = dirs
        return [str(d / "cgroup.procs") for d in dirs]

    def _freezer(self, sprite: str) -> tuple[Path, str, str] | None:
        """The sprite's freezer file and its frozen and thawed values, if it has one."""
        dirs = self._sprites.get(sprite)
        if not dirs:
            return None
        if self.version == 2:
            return dirs[0] / "cgroup.freeze", "1", "0"
        for c in self.controllers:
            if c.name == "freezer":
                return c.base / _safe(sprite) / "freezer.state", "FROZEN", "THAWED"
        return None

    def freeze(self, sprite: str) -> bool:
        """Freeze every process in the sprite's cgroups; False if there is no freezer."""
        freezer = self._freezer(sprite)
        if freezer is None:
            return False
        try:
            freezer[0].write_text(freezer[1])
        except OSError as exc:
            log.warning("cgroup %s: cannot freeze: %s", freezer[0].parent, exc)
            return False
        return True

    def thaw(self, sprite: str) -> None:
        """Let the sprite's frozen processes run again (no-op when not frozen)."""
        freezer = self._freezer(sprite)
        if freezer is not None:
            with contextlib.suppress(OSError):
                freezer[0].write_text(freezer[2])

    def kill(self, sprite: str) -> None:
        """SIGKILL whatever still runs in the sprite's cgroups."""
        # A v1-frozen process only dies once thawed.
        self.thaw(sprite)
        for d in self._sprites.get(sprite, []):
            for pid in _pids(d):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self, sprite: str) -> None:
        """Kill the sprite's processes and remove its cgroups."""
        self.thaw(sprite)
        dirs = self._sprites.pop(sprite, [])
        for d in dirs:
            for _ in range(100):
                for pid in _pids(d):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)

    def close(self) -> None:
        """Remove every sprite cgroup and this emulator's own directories."""
        for sprite in list(self._sprites):
            self.remove(sprite)
        for c in self.controllers:
            with contextlib.suppress(OSError):
                c.base.rmdir()


def _pids(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _safe(sprite: str) -> str:
    return sprite.replace("/", "_") or "_"


# --------------------------------------------------------------------------
# The per-emulator jail


_JOIN = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do { echo $$ > "$1"; } 2>/dev/null || '
    '{ echo "sprite sandbox: cannot enter the cgroup $1" >&2; exit 126; }; '
    'shift; n=$((n-1)); done; exec "$@"'
)
"""Moves the shell into each cgroup given (count first), then becomes the command."""


class Jail:
    """Sandbox settings and per-sprite resources of one emulator."""

    def __init__(self, limits: Limits | None = None, network: str = "auto") -> None:
        self.limits = limits or Limits()
        self.network_mode = network
        """``auto``: a network namespace per sprite when the tools are there; ``own``:
        always (a command fails without one); ``host``: share the emulator's."""
        self.network_error: str | None = None
        """Why the last sprite network could not be set up (``auto`` then shares the host's)."""
        self._cgroups: Cgroups | None = None
        self._networks: dict[str, SpriteNetwork] = {}
        self._network_locks: dict[str, asyncio.Lock] = {}
        self.closed = False

    def _is_closed(self) -> bool:
        # A method: mypy would keep the narrowing of ``self.closed`` across awaits.
        return self.closed

    @property
    def own_networks(self) -> bool:
        """Whether sprites get network namespaces of their own (see ``_netns``)."""
        if self.network_mode == "host":
            return False
        return self.network_mode == "own" or network_unavailable() is None

    async def network(self, sprite: str) -> SpriteNetwork | None:
        """The sprite's network namespace (started on first use), or None to share the host's.

        Raises :class:`NetworkUnavailable` when it cannot be set up and the
        mode is ``own``; with ``auto`` the failure is logged, remembered in
        :attr:`network_error` (the status line shows it) and the host's
        network is shared.
        """
        if not self.own_networks or self.closed:
            return None
        lock = self._network_locks.setdefault(sprite, asyncio.Lock())
        async with lock:
            net = self._networks.get(sprite)
            if net is not None and net.alive:
                return net
            if net is not None:
                del self._networks[sprite]
                await net.aclose()
            try:
                net = await SpriteNetwork.start()
            except NetworkUnavailable as exc:
                self.network_error = str(exc)
                if self.network_mode == "own":
                    raise
                log.warning("sprite %s shares the host's network: %s", sprite, exc)
                return None
            if self._is_closed():  # shut down while the namespace was being set up
                await net.aclose()
                return None
            self._networks[sprite] = net
            return net

    @property
    def cgroups(self) -> Cgroups:
        """The cgroup directories (found on first use)."""
        if self._cgroups is None:
            self._cgroups = Cgroups(self.limits)
        return self._cgroups

    def limit_prefix(self, sprite: str) -> list[str]:
        """A command prefix putting a process under the sprite's limits before it runs."""
        cg = self.cgroups
        prefix: list[str] = []
        names = {c.name for c in cg.controllers}
        if cg.active:
            files = cg.procs_files(sprite)
            prefix += [shutil.which("sh") or "/bin/sh", "-c", _JOIN, "sh", str(len(files)), *files]
        rlimits: list[str] = []
        if self.limits.max_processes is not None and "pids" not in names:
            rlimits.append(f"--nproc={self.limits.max_processes}")
        if self.limits.memory is not None and "memory" not in names:
            rlimits.append(f"--data={self.limits.memory}")
        prlimit = shutil.which("prlimit")
        if rlimits and prlimit is not None:
            prefix += [prlimit, *rlimits, "--"]
        return prefix

    def freeze(self, sprite: str) -> bool:
        """Freeze the sprite's processes with the cgroup freezer; False if that is impossible."""
        return self._cgroups is not None and self._cgroups.freeze(sprite)

    def thaw(self, sprite: str) -> None:
        """Undo :meth:`freeze`."""
        if self._cgroups is not None:
            self._cgroups.thaw(sprite)

    def kill(self, sprite: str) -> None:
        """SIGKILL whatever still runs in the sprite's cgroups (no-op without cgroups)."""
        if self._cgroups is not None:
            self._cgroups.kill(sprite)

    def describe(self) -> str:
        """How sprites are bounded, in a few words."""
        lim = self.limits
        cg = self.cgroups
        parts: list[str] = []
        names = {c.name for c in cg.controllers}
        if lim.max_processes is not None:
            how = (
                f"cgroup v{cg.version}" if "pids" in names else _rlimit("RLIMIT_NPROC per command")
            )
            parts.append(f"{lim.max_processes} processes ({how})")
        if lim.memory is not None:
            how = (
                f"cgroup v{cg.version}" if "memory" in names else _rlimit("RLIMIT_DATA per process")
            )
            parts.append(f"{_size(lim.memory)} memory ({how})")
        if lim.cpus is not None:
            how = f"cgroup v{cg.version}" if "cpu" in names else "not enforced"
            parts.append(f"{lim.cpus:g} CPUs ({how})")
        return ", ".join(parts) if parts else "no resource limits"

    async def forget(self, sprite: str) -> None:
        """Release a deleted sprite's network namespace and cgroups."""
        net = self._networks.pop(sprite, None)
        self._network_locks.pop(sprite, None)
        if net is not None:
            await net.aclose()
        if self._cgroups is not None:
            await asyncio.to_thread(self._cgroups.remove, sprite)

    def release_cgroups(self) -> None:
        """Remove the cgroups (for a jail that only described itself)."""
        if self._cgroups is not None:
            self._cgroups.close()

    async def aclose(self) -> None:
        """Release everything (emulator shutdown)."""
        self.closed = True
        networks = list(self._networks.values())
        self._networks.clear()
        await asyncio.gather(*(net.aclose() for net in networks))
        if self._cgroups is not None:
            await asyncio.to_thread(self._cgroups.close)


def _how(cg: Cgroups, controller: str, fallback: str) -> str:
    if any(c.name == controller for c in cg.controllers):
        return f"cgroup v{cg.version}"
    return _rlimit(fallback)


def _rlimit(what: str) -> str:
    if shutil.which("prlimit") is None:
        return "not enforced: no cgroup and no prlimit"
    if "NPROC" in what:
        # It counts every process of the host user, and sprites share theirs.
        return f"{what}, counting every process of the sprites' host uid"
    return what


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


_jails: weakref.WeakKeyDictionary[EmulatorState, Jail] = weakref.WeakKeyDictionary()


def jail_for(state: EmulatorState) -> Jail:
    """The jail of an emulator (created on first use from its configuration)."""
    jail = _jails.get(state)
    if jail is None:
        config = state.config
        limits = Limits(config.max_processes, config.memory_limit, config.cpu_limit)
        jail = _jails[state] = Jail(limits, config.sprite_network)
    return jail


def existing_jail(state: EmulatorState) -> Jail | None:
    """The jail of an emulator if one was made (a sprite command ran), else None."""
    return _jails.get(state)


def sandbox_status(mode: str, jail: Jail | None = None) -> tuple[bool, str]:
    """``(sandboxed, one line)`` describing how sprite commands run."""
    ok, reason = probe_bwrap()
    if mode == "none" or (mode == "auto" and not ok):
        why = "sandbox='none'" if mode == "none" else reason
        return False, (
            f"WARNING: no sandbox ({why}): sprite commands run unsandboxed as "
            f"{host_user()}, with everything that user can reach"
        )
    owned = jail is None
    jail = jail or Jail()
    try:
        return True, _sandboxed_line(jail)
    finally:
        if owned:
            jail.release_cgroups()


def _sandboxed_line(jail: Jail) -> str:
    if not jail.own_networks:
        shared = "sprite_network='host'"
        if jail.network_mode != "host":
            shared = network_unavailable() or shared
        network = f"the host's network ({shared}: sprites reach the host's loopback)"
    elif jail.network_error is not None and jail.network_mode == "auto":
        network = f"the host's network (setting up its own failed: {jail.network_error})"
    else:
        network = "its own network namespace (slirp4netns, no access to the host's loopback)"
    return (
        f"sandbox: bubblewrap, user {SPRITE_USER} (uid {SPRITE_UID}, host uid "
        f"{sprite_host_ids()[0]}) without capabilities, "
        f"own /etc, hostname, IPC and PID namespaces, {network}; limits per sprite: "
        f"{jail.describe()}; warm sprites: {_freezing(jail)}"
    )


def _freezing(jail: Jail) -> str:
    # What going warm does here (``_lifecycle``): the freezer stops every
    # process of the sprite; the fallback only stops exec sessions' processes.
    if jail.cgroups.can_freeze:
        return "frozen by the cgroup freezer"
    return "exec sessions and services stopped with SIGSTOP (no cgroup freezer)"
