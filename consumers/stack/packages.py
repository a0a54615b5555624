"""System binaries the local stack runs, installed from Debian packages when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from consumers.stack.errors import StackError
from consumers.stack.locks import locked


def find_or_install(binary: str, package: str, hint: str) -> Path:
    """``binary`` on PATH, installed with ``apt-get install package`` when running as root
    on Debian; else ``StackError`` with ``hint``."""
    found = shutil.which(binary)
    if found:
        return Path(found)
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise StackError(f"{binary} not found: {hint}")
    # Services are prepared in parallel: one apt-get at a time.
    with locked(Path("/tmp/memstream-apt.lock")):
        found = shutil.which(binary)
        if found:
            return Path(found)
        print(f"{binary} not found: running apt-get install -y {package}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            [apt, "update"],
            [apt, "install", "-y", "--no-install-recommends", package],
        ):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
                raise StackError(f"{' '.join(argv[1:])} failed ({'; '.join(tail)}): {hint}")
    found = shutil.which(binary)
    if not found:
        raise StackError(f"{binary} still missing after apt-get install {package}: {hint}")
    return Path(found)
