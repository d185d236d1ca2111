"""The one way this project writes files: atomically, durably, and with leftovers a later run can
recognise and clean.

Every write goes to a hidden temporary beside its target (same folder, so the same file system)
and is renamed over the target with ``os.replace``: a reader, or a kill at any moment, sees the old
file or the new one, never half of one. One fsync policy for everything:

* a **file** is flushed and fsynced before the rename (else a power cut after the rename can leave
  the new name pointing at empty blocks: ext4 ``data=ordered`` does not order renames of new files);
* the **folder** holding the renamed entry is fsynced after the rename (the rename itself is a
  change of the folder; POSIX only makes it durable once the folder is synced);
* a **staged folder** (a checkpoint, a run's ``last/``) has each of its files and itself fsynced
  before it is renamed into place, then its parent folder.

Cost, measured on this project's 2-core VM disk: a label map's save went from 8 to 16-20 ms and a
checkpoint's from 25 to 60 ms with the fsyncs; nothing next to the seconds of a prediction or an
epoch, and the price of a file that is still there after a power cut.

Names. Temporaries are ``.cascadeseg-tmp-<pid>-<random>-<hint>`` (files and folders alike); a swap
keeps the replaced folder as ``.<name>.old`` until the new one is in place. Because the writer's
process id is in the name, :func:`clean_leftovers` can tell the debris of a killed writer from the
work of a live one, and the next run in a folder finishes or removes what a kill left there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "TEMP_PREFIX",
    "write_bytes",
    "write_text",
    "write_json",
    "open_atomic",
    "staging_folder",
    "commit_file",
    "swap_folder",
    "swap_backup",
    "restore_swap",
    "clean_leftovers",
    "fsync_dir",
    "pid_alive",
]

TEMP_PREFIX = ".cascadeseg-tmp-"
_TEMP_NAME = re.compile(rf"^{re.escape(TEMP_PREFIX)}(?P<pid>\d+)-")
# Names earlier versions of this project gave their temporaries (no process id in them: whoever
# finds one finds a writer that is gone, since every current writer uses TEMP_PREFIX).
# Only these exact shapes: a folder may hold the user's own hidden files, which are never touched.
_LEGACY_TEMP = re.compile(
    r"^(\.cascadeseg-write-.+"  # the image writer's staging folder
    r"|\.(last|best)\.staging\..+"  # a run's checkpoint staging
    r"|\..+\.[a-z0-9_]{8}\.tmp"  # tempfile.mkstemp/mkdtemp temporaries of reports and checkpoints
    r"|\.config\.json\.\d+\.tmp|\.split\.json\.\d+\.tmp"  # a run's start
    r"|\.tmp-[a-z0-9_]{8}\.npz)$"  # autosave
)
_OLD_SUFFIX = ".old"
_HINT_CHARS = 60  # of the target's name kept in a temporary's name (file names stop at 255 bytes)

log = logging.getLogger("cascadeseg")


# -- durability ------------------------------------------------------------------------------------


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make the entries of ``folder`` (a rename into it) durable. Windows has no folder handles to
    sync (NTFS journals renames itself); file systems that refuse it are skipped."""
    if sys.platform.startswith("win"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. some network file systems: nothing more can be done from here
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in dirs:
            fsync_dir(os.path.join(root, name))
    fsync_dir(folder)


def _temp_name(hint: str) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{hint[:_HINT_CHARS]}"


# -- single files ----------------------------------------------------------------------------------


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike[str], mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """A handle on a temporary beside ``path``; on a clean exit it is fsynced and renamed over
    ``path`` (then the folder is fsynced), on an exception it is removed and ``path`` is untouched.
    For writers that stream (``np.savez``, ``torch.save``, ``savefig``)."""
    if "w" not in mode:
        raise ValueError(f"open_atomic: mode {mode!r} must write a new file ('w' or 'wb')")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / _temp_name(target.name)
    try:
        with open(tmp, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns the path."""
    with open_atomic(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and durably (newlines as given)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(
    path: str | os.PathLike[str], payload: Any, *, default: Callable[[Any], Any] | None = None, allow_nan: bool = True
) -> Path:
    """Write ``payload`` as indented JSON (with a final newline) atomically and durably."""
    return write_text(path, json.dumps(payload, indent=2, default=default, allow_nan=allow_nan) + "\n")


def commit_file(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a completely written ``staged`` file over ``target`` (same file system), durably."""
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, target)
    fsync_dir(Path(target).parent)


# -- folders ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def staging_folder(parent: str | os.PathLike[str], hint: str = "staging") -> Iterator[Path]:
    """A fresh temporary folder inside ``parent`` (created if needed) to build something in before
    it is committed; removed on exit with whatever is still in it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / _temp_name(hint)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def swap_backup(target: str | os.PathLike[str]) -> Path:
    """Where :func:`swap_folder` keeps the replaced ``target`` while it swaps: ``.<name>.old``."""
    target = Path(target)
    return target.with_name(f".{target.name}{_OLD_SUFFIX}")


def swap_folder(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Put the completely built folder ``staged`` in place of ``target`` (which may exist).

    Two renames: ``target`` -> ``.<name>.old``, ``staged`` -> ``target``; then the backup is
    removed. A kill between the renames leaves ``.<name>.old`` alone, which
    :func:`clean_leftovers` (or :func:`restore_swap`) puts back as ``target``.
    """
    staged, target = Path(staged), Path(target)
    _fsync_tree(staged)
    backup = swap_backup(target)
    restore_swap(target)  # an earlier kill between the renames: settle it first
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
    os.replace(staged, target)
    fsync_dir(target.parent)
    shutil.rmtree(backup, ignore_errors=True)
    return target


def restore_swap(target: str | os.PathLike[str]) -> str | None:
    """Settle a swap a kill interrupted: only ``.<name>.old`` left -> renamed back to ``target``;
    both left (killed before the backup was removed) -> the backup removed. Returns what was done."""
    target = Path(target)
    backup = swap_backup(target)
    if not backup.exists():
        return None
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)
        return f"removed {backup.name} (the backup of a finished swap of {target.name})"
    os.replace(backup, target)
    fsync_dir(target.parent)
    return f"restored {target.name} from {backup.name} (a kill fell between the two renames of its swap)"


# -- leftovers -------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (this process counts as running)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if sys.platform.startswith("win"):  # os.kill(pid, 0) would terminate on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(folder: str | os.PathLike[str], *, swapped: tuple[str, ...] = ()) -> list[str]:
    """Finish or remove what killed writers left in ``folder``; returns one line per action (also
    logged as warnings on the ``cascadeseg`` logger).

    Temporaries of dead processes (and of earlier versions, which named them without a process id)
    are removed; a temporary of a live process is another writer at work and stays. ``swapped``
    names folders written by :func:`swap_folder` (a run's ``last``/``best``): a lone
    ``.<name>.old`` is renamed back to ``<name>``, one beside ``<name>`` (a finished swap's backup)
    is removed. Nothing else is touched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done: list[str] = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        match = _TEMP_NAME.match(name)
        if match:
            if pid_alive(int(match["pid"])):
                continue
            _remove(entry)
            done.append(f"removed {name} (left by process {match['pid']}, which was killed while writing)")
        elif _LEGACY_TEMP.match(name):
            _remove(entry)
            done.append(f"removed {name} (left by a writer that was killed)")
    for name in swapped:
        note = restore_swap(folder / name)
        if note:
            done.append(note)
    if done:
        fsync_dir(folder)
        for line in done:
            log.warning("%s: %s", folder, line)
    return done
