"""Packaging: every package on disk is listed in pyproject.toml (so wheels are complete), and the
engine never imports napari or Qt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

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


def _engine_imports() -> dict[str, set[str]]:
    """Every module each engine file imports, anywhere in it (functions included), resolved to
    absolute names: the layering is checked on the source, not only on what one import pulls in."""
    import ast

    src = ROOT / "src"
    imports: dict[str, set[str]] = {}
    for path in sorted((src / "cascadeseg").rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        package = package.removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                found.add(name)
                found.update(f"{name}.{alias.name}" for alias in node.names)
        imports[module.removesuffix(".__init__")] = found
    return imports


def test_engine_source_never_imports_the_gui_and_only_cli_imports_cli() -> None:
    gui = ("napari", "napari_cascade", "qtpy", "PySide6", "PyQt5", "PyQt6", "magicgui", "vispy")
    for module, names in _engine_imports().items():
        bad = sorted(n for n in names if n.split(".")[0] in gui)
        assert not bad, f"{module} imports {bad}: the engine must not import the GUI"
        if not module.startswith("cascadeseg.cli"):
            cli = sorted(n for n in names if n == "cascadeseg.cli" or n.startswith("cascadeseg.cli."))
            assert not cli, f"{module} imports {cli}: nothing in the engine may import the command line"
    # The walk sees relative imports too (a check that cannot fail would prove nothing).
    assert "cascadeseg.inference.predictor" in _engine_imports()["cascadeseg.training.datasets"]


def test_every_engine_import_of_the_engine_resolves() -> None:
    """Imports inside functions run only when the function does: a module that was moved or renamed
    must not leave a lazy import behind (``cascadeseg plan`` once failed on one)."""
    import importlib
    import importlib.util

    missing = []
    for module, names in _engine_imports().items():
        for name in sorted(n for n in names if n.split(".")[0] == "cascadeseg"):
            if _is_package_path(name) and importlib.util.find_spec(name) is not None:
                continue  # a module
            parent, _, attribute = name.rpartition(".")
            if parent and importlib.util.find_spec(parent) is not None and hasattr(importlib.import_module(parent), attribute):
                continue  # a name defined in a module
            missing.append(f"{module}: {name}")
    assert not missing, missing


def _is_package_path(name: str) -> bool:
    """Whether every parent of ``name`` is a package (so ``find_spec`` may be asked about it)."""
    import importlib.util

    parts = name.split(".")
    for i in range(1, len(parts)):
        spec = importlib.util.find_spec(".".join(parts[:i]))
        if spec is None or spec.submodule_search_locations is None:
            return False
    return True


def test_every_data_file_beside_the_engine_code_is_package_data() -> None:
    """A file the engine reads from its own packages (the model catalogue) must reach a wheel."""
    import fnmatch

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    engine = ROOT / "src" / "cascadeseg"
    data_files = [
        path
        for path in engine.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc", ".typed") and "__pycache__" not in path.parts
    ]
    assert any(path.name == "catalogue.toml" for path in data_files)
    missing = [
        str(path.relative_to(ROOT))
        for path in data_files
        if not any(
            fnmatch.fnmatch(path.name, pattern)
            for pattern in declared.get(".".join(path.parent.relative_to(ROOT / "src").parts), [])
        )
    ]
    assert not missing, f"add these files to [tool.setuptools.package-data]: {missing}"
