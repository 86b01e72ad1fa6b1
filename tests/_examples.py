"""Running the scripts of examples/ as a user would: a subprocess with no token set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def env_without_token() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("SPRITES_TOKEN", "SPRITE_TOKEN", "SPRITES_API_URL"):
        env.pop(var, None)
    return env


def run_example(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env_without_token(),
        cwd=EXAMPLES.parent,
        timeout=timeout,
        check=False,
    )
    return done
