"""Drive a fleet of sprites: create, fan out a job, checkpoint, break one, restore it.

    python examples/fleet.py                 # 20 sprites
    python examples/fleet.py --count 50 --concurrency 16

1. creates ``--count`` sprites (creations wait for the organisation's
   creation limit instead of failing with 429);
2. wakes them and waits until every one is warm or running;
3. runs a small job on each, at most ``--concurrency`` at a time;
4. checkpoints every sprite;
5. breaks one sprite (deletes its result, scribbles over its input),
   restores it from its checkpoint and checks the files are back;
6. prints a table per sprite (status, exit code, timings);
7. deletes every sprite it created, also on failure or Ctrl-C.

Without SPRITES_TOKEN it runs against a local emulator (see ``_common.py``)
and takes a few seconds. On sprites.dev the creation limit (10 per minute)
sets the pace: 20 sprites take a little over a minute to create.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from _common import Bar, connect, note, run, table

from sprites_async import Sprite, SpritesConnectionError
from sprites_async.fleet import Fleet, FleetResult

if TYPE_CHECKING:
    from sprites_async import ExecResult

# The job: some deterministic work whose output we can verify after a restore.
JOB = (
    "seq 1 $((JOB_INDEX * 1000 + 1000)) > input.txt && "
    "sha256sum input.txt > result.txt && "
    "wc -l < input.txt"
)


async def exec_after_restore(sprite: Sprite, *argv: str) -> ExecResult:
    """Run a command, retrying while the sprite comes back from a restore."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await sprite.exec(*argv, timeout=30)
        except SpritesConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20, help="sprites to create (20)")
    parser.add_argument("--concurrency", type=int, default=8, help="sprites busy at once (8)")
    parser.add_argument("--prefix", default="fleet-demo-", help="name prefix (fleet-demo-)")
    parser.add_argument("--timeout", type=float, default=120, help="per-sprite job timeout (s)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")

    started = time.monotonic()
    async with connect() as session:
        fleet = Fleet(
            session.client,
            prefix=args.prefix,
            labels=["fleet-demo"],
            concurrency=args.concurrency,
            limiter=session.limiter,
        )
        async with fleet:  # leaving the block deletes every sprite it created
            bar = Bar("create", args.count)
            created = await fleet.create(args.count, on_progress=bar)
            bar.done(created)
            if not fleet.sprites:
                note(f"no sprite could be created: {created.errors}")
                return 1
            total = len(fleet)

            bar = Bar("wake", total)
            ready = await fleet.wait_ready(on_progress=bar)
            bar.done(ready)

            index = {name: i for i, name in enumerate(fleet.names)}

            async def job(sprite: Sprite) -> ExecResult:
                env = {"JOB_INDEX": str(index[sprite.name])}
                return await sprite.exec("sh", "-c", JOB, env=env)

            bar = Bar("job", total)
            jobs = await fleet.run(job, timeout=args.timeout, on_progress=bar)
            bar.done(jobs)

            async def checkpoint(sprite: Sprite) -> Any:
                return await sprite.checkpoints.create(comment="after the job")

            bar = Bar("checkpoint", total)
            checkpoints = await fleet.run(checkpoint, on_progress=bar)
            bar.done(checkpoints)

            repaired = await break_and_restore(fleet, checkpoints)

            print(summary_table(fleet, created, ready, jobs, checkpoints, repaired), flush=True)
            failures = [r for r in (created, ready, jobs, checkpoints) if not r.ok]
            ok = (
                not failures
                and repaired[1]
                and all(o.value is not None and o.value.exit_code == 0 for o in jobs.succeeded)
            )
            note(f"\ndeleting {len(fleet.created)} sprites ...")
        note(f"done in {time.monotonic() - started:.1f} s: {'all good' if ok else 'FAILURES'}")
    return 0 if ok else 1


async def break_and_restore(fleet: Fleet, checkpoints: FleetResult[Any]) -> tuple[str | None, bool]:
    """Break one checkpointed sprite, restore it, verify; returns (name, repaired)."""
    candidates = [o for o in checkpoints if o.ok]
    if not candidates:
        return None, False
    victim_name = candidates[len(candidates) // 2].sprite
    checkpoint_id = checkpoints[victim_name].value.id
    victim = next(s for s in fleet if s.name == victim_name)
    good = (await victim.exec("cat", "result.txt", check=True)).stdout

    await victim.exec("sh", "-c", "rm -f result.txt && echo garbage > input.txt", check=True)
    broken = await victim.exec("sh", "-c", "sha256sum -c result.txt")
    note(f"broke {victim_name}: result.txt gone (check exits {broken.exit_code})")

    started = time.monotonic()
    async for event in victim.checkpoints.restore(checkpoint_id):
        text = getattr(event, "data", "").strip()
        if text:
            note(f"  restore: {text}")
    restored = await exec_after_restore(
        victim, "sh", "-c", "cat result.txt && sha256sum -c result.txt"
    )
    repaired = restored.exit_code == 0 and restored.stdout.startswith(good)
    verdict = "verified" if repaired else "NOT repaired"
    note(
        f"restored {victim_name} from {checkpoint_id} in {time.monotonic() - started:.2f} s: "
        f"{verdict}"
    )
    return victim_name, repaired


def summary_table(
    fleet: Fleet,
    created: FleetResult[Any],
    ready: FleetResult[Any],
    jobs: FleetResult[ExecResult],
    checkpoints: FleetResult[Any],
    repaired: tuple[str | None, bool],
) -> str:
    rows = []
    for name in [o.sprite for o in created]:
        row = [name, created[name].status]
        if not created[name].ok:
            rows.append([*row, "-", "-", "-", "-", "-", created[name].describe()])
            continue
        wake, job, cp = ready[name], jobs[name], checkpoints[name]
        exit_code = str(job.value.exit_code) if job.ok and job.value is not None else job.status
        cp_id = cp.value.id if cp.ok and cp.value is not None else cp.status
        remark = ""
        if name == repaired[0]:
            remark = "broken + restored" if repaired[1] else "restore FAILED"
        elif not job.ok:
            remark = job.describe()
        rows.append(
            [
                *row,
                wake.value.status if wake.ok and wake.value is not None else wake.status,
                exit_code,
                seconds(job.duration),
                cp_id,
                seconds(cp.duration),
                remark,
            ]
        )
    headers = ["SPRITE", "CREATE", "STATUS", "EXIT", "JOB", "CHECKPOINT", "CP TIME", "NOTE"]
    return "\n" + table(headers, rows)


if __name__ == "__main__":
    run(main)
