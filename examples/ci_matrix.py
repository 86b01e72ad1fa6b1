"""A CI matrix on temporary sprites, seeded from a checkpointed base sprite.

    python examples/ci_matrix.py
    python examples/ci_matrix.py --keep-base     # reuse the prepared base next time

1. The base sprite (``--base``) is prepared once: the project is written and
   its setup step runs, then it is checkpointed with a comment naming the
   setup's hash. On later runs with ``--keep-base`` an existing checkpoint
   with that comment is restored instead (a cache hit: no setup).
2. The prepared workspace is exported from the base as a tarball.
3. One temporary sprite per matrix cell receives the tarball and runs the
   tests with the cell's settings, at most ``--concurrency`` at a time.
4. The results are printed as a matrix; the exit status is 1 if any cell failed.
5. The job sprites are always deleted (also on Ctrl-C); the base too,
   unless ``--keep-base``.

Without SPRITES_TOKEN it runs against a local emulator (see ``_common.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from typing import TYPE_CHECKING, Any

from _common import Bar, connect, note, run, table

from sprites_async import Sprite, SpritesClient
from sprites_async.fleet import Fleet, temporary_sprite

if TYPE_CHECKING:
    from sprites_async import ExecResult

# The project under test: a module and a test runner that takes its settings
# from the environment, as a CI job would.
PROJECT = {
    "project/calc.py": """\
def add(a, b):
    return a + b

def mean(values):
    return sum(values) / len(values)
""",
    "project/run_tests.py": """\
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
import calc

shard, shards = int(os.environ["SHARD"]), int(os.environ["SHARDS"])
strict = os.environ["MODE"] == "strict"
cases = [(calc.add, (i, i), 2 * i) for i in range(60)]
cases += [(calc.mean, (list(range(i + 1)),), i / 2) for i in range(60)]
mine = cases[shard::shards]
failed = 0
for fn, args, expected in mine:
    got = fn(*args)
    if got != expected or (strict and type(got) is not type(expected)):
        failed += 1
time.sleep(0.2)  # pretend the tests take a moment
with open(os.path.expanduser("~/project/.setup-done")) as fh:
    assert fh.read().strip() == "ok", "the setup step did not run"
print(f"shard {shard}/{shards} {os.environ['MODE']}: {len(mine) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
""",
}
SETUP = "cd project && python3 -m py_compile calc.py run_tests.py && echo ok > .setup-done"

SHARDS = 3
MODES = ("lenient", "strict")


def setup_hash() -> str:
    digest = hashlib.sha256(SETUP.encode())
    for path, text in sorted(PROJECT.items()):
        digest.update(path.encode() + b"\0" + text.encode())
    return digest.hexdigest()[:12]


async def prepare_base(client: SpritesClient, base: Sprite) -> str:
    """Bring the base sprite to the prepared state; returns how (``cache hit`` or ``setup``)."""
    checkpoints = base.checkpoints
    comment = f"ci-base prepared {setup_hash()}"
    for cp in await checkpoints.list():
        if cp.comment == comment:
            await checkpoints.restore(cp.id)
            return f"cache hit: restored {cp.id}"
    for path, text in PROJECT.items():
        await base.exec("sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}', stdin=text)
    await base.exec("sh", "-c", SETUP, check=True)
    cp = await checkpoints.create(comment=comment)
    return f"setup ran, checkpointed as {cp.id}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base", default="", help="base sprite name (default: a fresh one, or ci-base-demo)"
    )
    parser.add_argument("--keep-base", action="store_true", help="do not delete the base")
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300, help="per-job timeout (s)")
    args = parser.parse_args()
    if args.keep_base and not args.base:
        args.base = "ci-base-demo"  # a name the next run can find
    matrix = [
        {"SHARD": str(s), "SHARDS": str(SHARDS), "MODE": m}
        for s, m in itertools.product(range(SHARDS), MODES)
    ]
    started = time.monotonic()
    async with connect() as session:
        client = session.client
        if args.base:
            info, created = await client.sprites.get_or_create(args.base, labels=["ci-base"])
            base_cm: Any = _existing(client.sprite(info), delete=created and not args.keep_base)
        else:
            base_cm = temporary_sprite(client, "ci-base-", labels=["ci"], limiter=session.limiter)
        async with base_cm as base:
            note(f"base {base.name}: {await prepare_base(client, base)}")
            tarball = await base.exec("tar", "czf", "-", "project", check=True)
            note(f"exported the workspace: {len(tarball.stdout)} bytes")

            fleet = Fleet(
                client,
                prefix="ci-job-",
                labels=["ci"],
                concurrency=args.concurrency,
                limiter=session.limiter,
            )
            async with fleet:  # deletes the job sprites, whatever happens
                bar = Bar("create", len(matrix))
                created_jobs = await fleet.create(len(matrix), on_progress=bar)
                bar.done(created_jobs)
                cells = dict(zip(fleet.names, matrix))

                async def job(sprite: Sprite) -> ExecResult:
                    await sprite.exec("tar", "xzf", "-", stdin=tarball.stdout, check=True)
                    env = cells[sprite.name]
                    return await sprite.exec("python3", "project/run_tests.py", env=env)

                bar = Bar("run", len(cells))
                results = await fleet.run(job, timeout=args.timeout, on_progress=bar)
                bar.done(results)

        rows = []
        for outcome in results:
            cell = cells[outcome.sprite]
            res = outcome.value
            if outcome.ok and res is not None:
                verdict = "pass" if res.exit_code == 0 else f"FAIL ({res.exit_code})"
                detail = (res.stdout_text or res.stderr_text).strip().splitlines()[-1:]
            else:
                verdict, detail = outcome.status.upper(), [outcome.describe()]
            duration = f"{outcome.duration:.2f}s" if outcome.duration is not None else "-"
            rows.append([cell["SHARD"], cell["MODE"], verdict, duration, " ".join(detail)])
        print("\n" + table(["SHARD", "MODE", "RESULT", "TIME", "OUTPUT"], rows), flush=True)
        passed = sum(1 for r in rows if r[2] == "pass")
        note(f"\n{passed}/{len(rows)} cells passed in {time.monotonic() - started:.1f} s")
    return 0 if passed == len(rows) else 1


class _existing:
    """``async with`` over an existing sprite, deleting it afterwards only if asked."""

    def __init__(self, sprite: Sprite, *, delete: bool) -> None:
        self.sprite = sprite
        self.delete = delete

    async def __aenter__(self) -> Sprite:
        return self.sprite

    async def __aexit__(self, *exc: object) -> None:
        if self.delete:
            await self.sprite.delete(missing_ok=True)


if __name__ == "__main__":
    run(main)
