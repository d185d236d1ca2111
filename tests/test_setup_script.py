"""scripts/setup.sh decides whether to install the X libraries without re-running apt-get when
they are present (its `ldconfig -p | grep -q` check used to fail under pipefail: grep stops at the
first match, ldconfig dies of SIGPIPE, the pipeline reports failure)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def _fake_tools(folder: Path, with_library: bool) -> dict[str, str]:
    folder.mkdir()
    lines = ["\tlibxcb-icccm.so.4 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libxcb-icccm.so.4"] if with_library else []
    # A long listing after the match: grep -q leaves while ldconfig is still writing.
    lines += [f"\tlibfake{i}.so.1 (libc6,x86-64) => /usr/lib/libfake{i}.so.1" for i in range(200_000)]
    listing = folder / "listing.txt"
    listing.write_text("\n".join(lines) + "\n")
    for name, body in (("ldconfig", f'cat "{listing}"'), ("Xvfb", "exit 0")):
        tool = folder / name
        tool.write_text(f"#!/usr/bin/env bash\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_present_libraries_are_found_every_time(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path / "bin", with_library=True)
    for _ in range(5):
        done = subprocess.run(["bash", str(SETUP), "--check-x"], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and "present" in done.stdout, done.stdout + done.stderr


def test_missing_libraries_are_reported(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path / "bin", with_library=False)
    done = subprocess.run(["bash", str(SETUP), "--check-x"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "missing" in done.stdout
