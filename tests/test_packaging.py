"""Packaging: every package on disk is listed in pyproject.toml (so wheels are complete), and the
engine never imports napari or Qt."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for base, prefix in ((ROOT / "src", ""), (ROOT, "")):
        for init in base.glob("**/__init__.py"):
            rel = init.parent.relative_to(base)
            name = ".".join(rel.parts)
            if name.startswith(("cascadeseg", "napari_cascade")) and ".venv" not in init.parts:
                found.add(prefix + name)
    return found


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, f"add these packages to [tool.setuptools].packages: {sorted(missing)}"


def test_engine_imports_without_napari_or_qt() -> None:
    code = (
        "import sys, cascadeseg, cascadeseg.io, cascadeseg.models, cascadeseg.inference, "
        "cascadeseg.training, cascadeseg.losses, cascadeseg.metrics, cascadeseg.editing, cascadeseg.cli.main;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('napari','qtpy','PySide6','PyQt5','magicgui')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_resources_are_reachable_as_package_data() -> None:
    from importlib.resources import files

    root = files("cascadeseg.resources")
    assert root.joinpath("sample").is_dir()
