"""A validated command (:class:`ExecRequest`) and the start errors its answers may carry."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass

from sprites_async._errors import APIError, CommandStartError, command_start_error
from sprites_async._validation import check_argv, check_cwd, check_duration, check_env, check_size

__all__ = ["BASE_ENV", "DEFAULT_PATH", "TTY_ENV", "ExecRequest", "Stdin"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV: Mapping[str, str] = {"PATH": DEFAULT_PATH, "HOME": "/home/sprite", "LANG": "C.UTF-8"}
"""What a command's environment starts from when ``env`` is given.

The sprite's default environment is replaced, not extended, by an ``env``
parameter, so a command given only ``FOO=1`` would lose ``PATH``: the SDK
starts from this base unless ``env_replace`` is set.
"""
TTY_ENV: Mapping[str, str] = {"TERM": "xterm-256color"}

Stdin = bytes | bytearray | memoryview | str | AsyncIterable[bytes] | None


def _stdin_bytes(stdin: Stdin) -> bytes | None:
    if isinstance(stdin, str):
        return stdin.encode()
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return bytes(stdin)
    return None


@dataclass(frozen=True, slots=True)  # slots: one per live session
class ExecRequest:
    """A validated command: what goes on the wire."""

    argv: tuple[str, ...]
    env: tuple[str, ...] | None = None
    cwd: str | None = None
    tty: bool = False
    stdin: bool = False
    cols: int | None = None
    rows: int | None = None
    max_run_after_disconnect: str | None = None

    @classmethod
    def build(
        cls,
        argv: Sequence[object],
        *,
        env: Mapping[str, str] | None = None,
        env_replace: bool = False,
        cwd: str | None = None,
        tty: bool = False,
        stdin: bool = False,
        cols: int | None = None,
        rows: int | None = None,
        max_run_after_disconnect: float | str | None = None,
    ) -> ExecRequest:
        """Validate everything before anything is sent (ValueError/TypeError)."""
        args = check_argv(argv)
        env_list: tuple[str, ...] | None = None
        if env is not None:
            user = check_env(env)
            merged = dict(user) if env_replace else {**BASE_ENV, **(TTY_ENV if tty else {}), **user}
            env_list = tuple(f"{k}={v}" for k, v in merged.items())
        return cls(
            argv=args,
            env=env_list,
            cwd=None if cwd is None else check_cwd(cwd),
            tty=bool(tty),
            stdin=bool(stdin),
            cols=None if cols is None else check_size(cols, "cols"),
            rows=None if rows is None else check_size(rows, "rows"),
            max_run_after_disconnect=None
            if max_run_after_disconnect is None
            else check_duration(max_run_after_disconnect, "max_run_after_disconnect"),
        )

    def query(self, *, http: bool = False) -> list[tuple[str, str]]:
        """Query parameters of ``/exec`` (repeated ``cmd`` and ``env``)."""
        params = [("cmd", a) for a in self.argv]
        params.append(("path", self.argv[0]))
        params.extend(("env", e) for e in self.env or ())
        if self.cwd is not None:
            params.append(("dir", self.cwd))
        params.append(("stdin", "true" if self.stdin else "false"))
        if not http:
            if self.tty:
                params.append(("tty", "true"))
                params.append(("cols", str(self.cols or 80)))
                params.append(("rows", str(self.rows or 24)))
            if self.max_run_after_disconnect is not None:
                params.append(("max_run_after_disconnect", self.max_run_after_disconnect))
        return params

    def control_args(self) -> dict[str, str | list[str]]:
        """``op.start`` arguments.

        Every value is a string or a list of strings (``"tty": "true"``,
        ``"rows": "24"``): servers drop any other JSON type silently.
        """
        args: dict[str, str | list[str]] = {
            "cmd": list(self.argv),
            "path": self.argv[0],
            "stdin": "true" if self.stdin else "false",
        }
        if self.env is not None:
            args["env"] = list(self.env)
        if self.cwd is not None:
            args["dir"] = self.cwd
        if self.tty:
            args["tty"] = "true"
            args["cols"] = str(self.cols or 80)
            args["rows"] = str(self.rows or 24)
        if self.max_run_after_disconnect is not None:
            args["max_run_after_disconnect"] = self.max_run_after_disconnect
        return args


def _start_error_of(
    exc: APIError, request: ExecRequest | None, sprite: str, operation: str = "exec"
) -> CommandStartError | None:
    """The :class:`CommandStartError` a 500 ``failed to start process`` means, if it is one."""
    if request is None or exc.status_code != 500:
        return None
    return command_start_error(
        exc.message,
        prefixed=True,
        argv=request.argv,
        cwd=request.cwd,
        status_code=exc.status_code,
        headers=exc.headers,
        operation=operation,
        sprite=sprite,
    )
