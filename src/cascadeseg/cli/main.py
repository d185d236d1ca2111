"""``cascadeseg``: the command line of napari-cascade.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and ``run(args) -> int``.
Only the module of the command being run is imported (so ``cascadeseg predict`` never pays for,
or breaks on, the training or GUI code); the other commands appear in ``--help`` from the table
below. A :class:`~cascadeseg.errors.CascadeSegError` is printed as one line,
``cascadeseg: error: ...``, exit code 2; so are argument errors. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import CascadeSegError

PROG = "cascadeseg"

# name -> (module, one-line help shown by `cascadeseg --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("cascadeseg.cli.predict", "segment scans (files, DICOM folders or MSD folders) with a checkpoint"),
    "evaluate": ("cascadeseg.cli.evaluate", "score a folder of predictions against a folder of labels"),
    "models": ("cascadeseg.cli.models", "list the model zoo, its measured table, and installed checkpoints"),
    "bench": ("cascadeseg.cli.bench", "measure inference speed and memory of the models on this device"),
    "train": ("cascadeseg.cli.train", "train a model on an MSD folder or image/label pairs (planned for the budget)"),
    "ensemble": ("cascadeseg.cli.ensemble", "average trained networks of one architecture into one checkpoint"),
    "plan": ("cascadeseg.cli.plan", "print the training plan for a dataset on this machine, without training"),
    "demo": ("cascadeseg.cli.demo", "run the bundled sample through the default model (GUI or headless)"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """Argument errors as one line naming the command, instead of usage text plus the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def command_parser(subparsers: Any, name: str, module_doc: str | None) -> argparse.ArgumentParser:
    """The sub-parser of command ``name`` for its module's ``add_parser``: the one-line help from
    :data:`COMMANDS`, the description from the module docstring after its first paragraph."""
    description = module_doc.split("\n\n", 1)[-1] if module_doc else None
    return subparsers.add_parser(
        name, help=COMMANDS[name][1], description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (the others are placeholders)."""
    parser = OneLineErrorParser(
        prog=PROG,
        description="napari-cascade engine: segment MRI/CT with cascaded and nested U-Nets.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in COMMANDS.items():
        if name == command:
            module = _import_command(name, module_name)
            sub = module.add_parser(subparsers)
            sub.set_defaults(_run=module.run)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _import_command(name: str, module_name: str):  # noqa: ANN202 - a module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise CascadeSegError(
                f"the '{name}' command is not available in this installation (module {module_name} is missing)"
            ) from exc
        raise


def _chosen_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None  # an unknown command: argparse reports it
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascadeseg`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..inference import allocator

    allocator.enable()  # this process only runs the engine: keep freed inference memory (see allocator)
    _show_engine_notes()
    try:
        parser = build_parser(_chosen_command(argv))
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 0 if not argv else 2
        return int(args._run(args) or 0)
    except CascadeSegError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


class _NoteHandler(logging.StreamHandler):
    """Prints to whatever ``sys.stderr`` is when a note is written (tests swap it)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)  # type: ignore[assignment]


def _show_engine_notes() -> None:
    """The engine reports what it did on the user's behalf (leftovers of a killed run removed, a
    stale run folder taken over) as warnings on the ``cascadeseg`` logger: print them as notes."""
    logger = logging.getLogger("cascadeseg")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        handler = _NoteHandler()
        handler.setFormatter(logging.Formatter(f"{PROG}: note: %(message)s"))
        logger.addHandler(handler)


if __name__ == "__main__":  # pragma: no cover - `python -m cascadeseg.cli.main`
    sys.exit(main())
