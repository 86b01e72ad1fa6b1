"""``doctor [NAME]``: step-by-step triage of "it does not work".

Each step reports ok/warn/fail/skip with its timing, and for API failures the
status code and request ids. The run ends with one plain-language diagnosis
naming the most likely cause: no token, a malformed or refused token, the
network (DNS, connect, TLS, timeouts), the service failing, or a sprite that
does not exist. The token itself is never printed, only its organisation.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from sprites_async._errors import APIError, SpritesConnectionError, SpritesError
from sprites_async._transport import is_loopback_url

from ._context import (
    EXIT_API,
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_USAGE,
    Context,
    Handler,
    token_from_env,
)
from ._layout import examples

__all__ = ["Step", "add_commands"]

AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]
StepStatus = Literal["ok", "warn", "fail", "skip"]

NETWORK_TIMEOUT = 10.0


def add_commands(command: AddCommand) -> None:
    """Register ``doctor``."""
    p = command("doctor", cmd_doctor, "check token, network, API and a sprite, step by step")
    p.add_argument("name", metavar="NAME", nargs="?", help="also check this sprite")
    p.add_argument("--json", action="store_true", help="the steps and diagnosis as JSON")
    examples(p, "doctor", "doctor demo", "doctor demo --json")


@dataclass
class Step:
    """One check: what was tried, how it went, how long it took."""

    name: str
    status: StepStatus = "skip"
    detail: str = ""
    ms: float | None = None
    http_status: int | None = None
    request_id: str | None = None
    fly_request_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Problem:
    """The diagnosis: a category, a sentence, and the exit status it implies."""

    kind: str
    message: str
    exit_code: int


class Doctor:
    """Runs the steps in order; later steps are skipped once one makes them pointless."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.steps: list[Step] = []
        self.problem: Problem | None = None

    def _blame(self, kind: str, message: str, exit_code: int) -> None:
        # The first problem found is the root cause; later ones follow from it.
        if self.problem is None:
            self.problem = Problem(kind, message, exit_code)

    async def step(
        self, name: str, check: Callable[[Step], Awaitable[None]], *, timeout: float | None = None
    ) -> Step:
        """Run one check, timing it and turning its exception into a failed step."""
        step = Step(name)
        self.steps.append(step)
        started = time.perf_counter()
        try:
            if timeout is None:
                await check(step)
            else:
                await asyncio.wait_for(check(step), timeout)
            if step.status == "skip":
                step.status = "ok"
        except APIError as exc:
            step.status = "fail"
            step.http_status = exc.status_code
            step.request_id = exc.request_id
            step.fly_request_id = exc.fly_request_id
            step.detail = f"HTTP {exc.status_code}: {exc.message}"
            self._diagnose_api(exc, name)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            step.status = "fail"
            step.detail = f"timed out ({exc})" if str(exc) else "timed out"
            self._blame(
                "network_timeout",
                f"{name}: no answer in time. The network path to the API is slow or "
                "blocked (proxy, firewall, VPN), or the service is overloaded.",
                EXIT_CONNECTION,
            )
        except (SpritesConnectionError, OSError) as exc:
            step.status = "fail"
            step.detail = str(exc) or type(exc).__name__
            self._blame(
                "network",
                f"{name} failed: {step.detail}. Check the network and SPRITES_API_URL.",
                EXIT_CONNECTION,
            )
        except SpritesError as exc:
            step.status = "fail"
            step.detail = str(exc)
            self._blame("error", f"{name} failed: {exc}", EXIT_API)
        finally:
            step.ms = round((time.perf_counter() - started) * 1000, 1)
        self._show(step)
        return step

    def skip(self, name: str, why: str) -> None:
        """Record a step that was not run."""
        step = Step(name, "skip", why)
        self.steps.append(step)
        self._show(step)

    def _diagnose_api(self, exc: APIError, step: str) -> None:
        ids = ", ".join(
            f"{k} {v}"
            for k, v in (("request id", exc.request_id), ("fly", exc.fly_request_id))
            if v
        )
        quote = f" (quote {ids} when reporting it)" if ids else ""
        status = exc.status_code
        if status == 401:
            self._blame(
                "bad_token",
                "The API refused the token (401): it is wrong, revoked, or for another "
                "environment. Make a new one at https://sprites.dev/account and set "
                "SPRITES_TOKEN.",
                EXIT_API,
            )
        elif status == 403:
            self._blame(
                "forbidden",
                f"The token may not do this (403 during {step}){quote}.",
                EXIT_API,
            )
        elif exc.is_not_found and self.ctx.args.name:
            self._blame(
                "sprite_missing",
                f"The token works, but there is no sprite named {self.ctx.args.name!r} in "
                "this organisation (check the name, or `sprites-async list`).",
                EXIT_API,
            )
        elif status == 429:
            self._blame("rate_limited", f"Rate limited during {step}: {exc.message}.", EXIT_API)
        elif status >= 500:
            self._blame(
                "service_error",
                f"The service failed with {status} during {step}: a problem on the service "
                f"side, not with your setup. Retry in a while{quote}.",
                EXIT_API,
            )
        else:
            self._blame("api_error", f"{step}: unexpected {status}: {exc.message}{quote}", EXIT_API)

    def _show(self, step: Step) -> None:
        if self.ctx.args.json:
            return
        out = self.ctx.out
        timing = f"{step.ms:.0f} ms" if step.ms is not None and step.status != "skip" else ""
        label = out.status(step.status).ljust(4 + len(out.status(step.status)) - len(step.status))
        line = f"  {label}  {step.name:<22} {timing:>8}  {step.detail}"
        out.line(line.rstrip())
        extra = []
        if step.http_status is not None:
            extra.append(f"status {step.http_status}")
        if step.request_id:
            extra.append(f"x-request-id {step.request_id}")
        if step.fly_request_id:
            extra.append(f"fly-request-id {step.fly_request_id}")
        if extra:
            out.line(" " * 8 + "; ".join(extra))

    # ------------------------------------------------------------------ steps

    async def run(self) -> int:
        ctx = self.ctx
        if not ctx.args.json:
            ctx.out.line(ctx.out.bold("sprites-async doctor"))
        token_ok = await self._token()
        if ctx.client is None:
            return self._finish()
        client = ctx.client
        url = urlsplit(client.base_url)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses: list[str] = []

        async def dns(step: Step) -> None:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
            addresses.extend(sorted({str(info[4][0]) for info in infos}))
            step.detail = f"{host} -> {', '.join(addresses[:4])}"
            step.data["addresses"] = addresses

        dns_step = await self.step("DNS resolution", dns, timeout=NETWORK_TIMEOUT)
        if dns_step.status == "fail":
            self.problem = Problem(
                "dns",
                f"Cannot resolve {host}: check your network or DNS, or SPRITES_API_URL "
                f"({client.base_url}).",
                EXIT_CONNECTION,
            )
            return self._finish()

        async def tcp(step: Step) -> None:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await writer.wait_closed()
            step.detail = f"{host}:{port}"

        tcp_step = await self.step("TCP connect", tcp, timeout=NETWORK_TIMEOUT)
        if tcp_step.status == "fail":
            self.problem = None
            self._blame(
                "network",
                f"Cannot connect to {host}:{port} ({tcp_step.detail}): the API is unreachable "
                "from here (firewall, proxy, offline), or SPRITES_API_URL is wrong.",
                EXIT_CONNECTION,
            )
            return self._finish()
        if url.scheme == "https":

            async def tls(step: Step) -> None:
                context = ssl.create_default_context()
                _, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host
                )
                tls_object = writer.get_extra_info("ssl_object")
                version = tls_object.version() if tls_object is not None else "?"
                writer.close()
                await writer.wait_closed()
                step.detail = f"{version} (includes TCP connect)"

            tls_step = await self.step("TLS handshake", tls, timeout=NETWORK_TIMEOUT)
            if tls_step.status == "fail":
                self.problem = None
                self._blame(
                    "tls",
                    f"TLS with {host} failed ({tls_step.detail}): an intercepting proxy or "
                    "an outdated CA bundle is the usual cause.",
                    EXIT_CONNECTION,
                )
                return self._finish()
        else:
            self.skip("TLS handshake", f"{url.scheme}:// (no TLS)")
        if not token_ok:
            return self._finish()
        await self._api()
        return self._finish()

    async def _token(self) -> bool:
        ctx = self.ctx
        token, var = token_from_env()

        async def check(step: Step) -> None:
            if ctx.emulator is not None:
                step.detail = f"embedded emulator ({ctx.emulator.url})"
                return
            if token is None:
                step.status = "fail"
                step.detail = "SPRITES_TOKEN and SPRITE_TOKEN are not set"
                self._blame(
                    "no_token",
                    "No token: set SPRITES_TOKEN to a token from https://sprites.dev/account "
                    "(or try `sprites-async --emulator doctor` locally).",
                    EXIT_USAGE,
                )
                return
            parts = token.split("/")
            org = parts[0] if len(parts) > 1 else "?"
            step.data = {"variable": var, "org": org, "parts": len(parts)}
            if len(parts) != 4 or not all(parts):
                step.status = "warn"
                step.detail = (
                    f"${var} has {len(parts)} slash-separated parts, expected 4 "
                    "(org/org-id/token-id/secret); it may be truncated"
                )
                return
            step.detail = f"${var}, organisation {org!r}"

        step = await self.step("token", check)
        return step.status != "fail"

    async def _api(self) -> None:
        from sprites_async._config import RetryPolicy

        ctx = self.ctx
        client = ctx.client
        assert client is not None
        # Retries would hide the very failures we are looking for, and their
        # waits would distort the timings.
        client.retry = RetryPolicy.none()
        page_holder: list[Any] = []

        async def auth(step: Step) -> None:
            page = await client.sprites.list(max_results=1)
            page_holder.append(page)
            step.detail = "token accepted (list, max_results=1)"

        auth_step = await self.step("API + authentication", auth, timeout=60)
        if auth_step.status == "fail" or not page_holder:
            self.skip("organisation", "needs authentication")
            if ctx.args.name:
                self.skip("sprite", "needs authentication")
                self.skip("exec round trip", "needs authentication")
            return

        async def org(step: Step) -> None:
            counters = page_holder[0].counters
            step.data = {k: v for k, v in asdict_struct(counters).items() if v is not None}
            if counters.running is None:
                step.detail = f"{counters.name or client.org or '?'} (no counters reported)"
                return
            step.detail = (
                f"{counters.name or client.org}: {counters.running} running "
                f"(limit {counters.running_limit}), {counters.warm} warm "
                f"(limit {counters.warm_limit}), {counters.cold} cold"
            )
            if counters.running_limit and counters.running >= counters.running_limit:
                step.status = "warn"
                step.detail += "; at the running limit"
            if counters.name and client.org and counters.name != client.org:
                # The token's first segment is the organisation's slug.
                step.status = "warn"
                step.detail += f"; the token names organisation {client.org!r}"

        await self.step("organisation", org, timeout=10)
        await self._sandbox()
        name = ctx.args.name
        if not name:
            self.skip("sprite", "no NAME given")
            return
        sprite = client.sprite(name)

        async def status(step: Step) -> None:
            info = await sprite.refresh()
            step.detail = f"{name}: {info.status}"
            step.data = {"status": info.status, "version": info.version}

        sprite_step = await self.step("sprite", status, timeout=60)
        if sprite_step.status == "fail":
            self.skip("exec round trip", "needs the sprite")
            return
        cold = sprite.info is not None and sprite.info.status == "cold"

        async def round_trip(step: Step) -> None:
            result = await sprite.exec("true", timeout=30)
            step.detail = "`true` exited 0" + (" (woke a cold sprite)" if cold else "")
            if result.exit_code != 0:
                step.status = "warn"
                step.detail = f"`true` exited {result.exit_code}"

        await self.step("exec round trip", round_trip, timeout=client.timeouts.wake or 120)

    async def _sandbox(self) -> None:
        """For an emulator: whether its sprites' commands run sandboxed (a warning if not).

        The embedded emulator is asked directly; an emulator on a loopback
        URL over ``GET /_emulator/sandbox``. The real service is not asked.
        """
        ctx = self.ctx
        client = ctx.client
        emulator = ctx.emulator
        assert client is not None
        if emulator is None and not is_loopback_url(client.base_url):
            return

        async def check(step: Step) -> None:
            if emulator is not None:
                sandboxed, line = emulator.sandboxed, emulator.sandbox_status
            else:
                resp = await client._request(
                    "GET", "/_emulator/sandbox", operation="emulator sandbox", ok=(200, 404)
                )
                if resp.status == 404:
                    step.detail = "not reported (an older emulator, or not an emulator)"
                    return
                doc = resp.parse(msgspec.json.decode)
                sandboxed = bool(doc.get("sandboxed")) if isinstance(doc, dict) else False
                line = str(doc.get("status", "")) if isinstance(doc, dict) else ""
            step.data = {"sandboxed": sandboxed}
            step.detail = line
            if not sandboxed or "the host's network" in line:
                step.detail += "; sprites share the host's ports: two cannot serve on one port"
            if not sandboxed:
                step.status = "warn"

        await self.step("emulator sandbox", check, timeout=10)

        async def checkpoints(step: Step) -> None:
            if emulator is not None:
                method, line = await asyncio.to_thread(lambda: emulator.checkpoint_status)
            else:
                resp = await client._request(
                    "GET", "/_emulator/sandbox", operation="emulator sandbox", ok=(200, 404)
                )
                doc = resp.parse(msgspec.json.decode) if resp.status == 200 else None
                cps = doc.get("checkpoints") if isinstance(doc, dict) else None
                if not isinstance(cps, dict):
                    step.detail = "not reported (an older emulator, or not an emulator)"
                    return
                method, line = str(cps.get("method", "")), str(cps.get("status", ""))
            step.data = {"method": method}
            step.detail = line
            if method != "hard-links":
                step.status = "warn"

        await self.step("emulator checkpoints", checkpoints, timeout=10)

    def _finish(self) -> int:
        ctx = self.ctx
        problem = self.problem
        warned = any(s.status == "warn" for s in self.steps)
        if problem is None:
            diagnosis = "Everything checked works." + (" See the warnings above." if warned else "")
            code = EXIT_OK
            kind = "ok"
        else:
            diagnosis, code, kind = problem.message, problem.exit_code, problem.kind
        if ctx.args.json:
            ctx.out.json(
                {
                    "ok": problem is None,
                    "diagnosis": kind,
                    "message": diagnosis,
                    "exit_code": code,
                    "steps": [asdict(s) for s in self.steps],
                }
            )
        else:
            ctx.out.line()
            label = "diagnosis:" if problem is not None else "result:"
            ctx.out.line(f"{ctx.out.bold(label)} {diagnosis}")
        return code


def asdict_struct(obj: Any) -> dict[str, Any]:
    """A msgspec Struct as a dict of its fields."""
    return {name: getattr(obj, name) for name in obj.__struct_fields__}


async def cmd_doctor(ctx: Context) -> int:
    """``doctor [NAME]``."""
    return await Doctor(ctx).run()
