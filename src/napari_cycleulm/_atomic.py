"""Atomic file writes: a file is either the old one or the complete new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` on success.

    Writers write to the yielded path; if they raise (or the process is
    interrupted) the destination keeps its previous content and the temporary
    file is removed.

    Parameters
    ----------
    path : str or PathLike
        Final destination.  Its parent folder is created if missing (and
        removed again if the write fails and it is still empty).
    """
    path = Path(path)
    created = _make_parents(path.parent)
    tmp_path = None
    done = False
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        # mkstemp makes the file private (0600); give it the permissions a plain
        # open() would (0666 less the umask), as users expect of their exports.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        yield tmp_path
        os.replace(tmp_path, path)
        done = True
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()
        if not done:
            _remove_if_empty(created)  # a failed write leaves no empty folders behind


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- folders -------------------------------------------------------------------
def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors; return those created, deepest last."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for q in reversed(missing):
        q.mkdir(exist_ok=True)
    return list(reversed(missing))


def _remove_if_empty(folders: list[Path]) -> None:
    for q in reversed(folders):
        try:
            q.rmdir()
        except OSError:
            break


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(stage: Path, path: Path) -> None:
    """Make the complete folder ``stage`` become ``path``; the old ``path`` ends up in ``stage``."""
    if not path.exists():
        os.rename(stage, path)
        return
    if _exchange(stage, path):
        return
    # Fallback (no renameat2): two renames, undone if the second fails.
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old.rmdir()
    os.rename(path, old)
    try:
        os.rename(stage, path)
    except BaseException:
        os.rename(old, path)
        raise
    os.rename(old, stage)


def _merge_in(stage: Path, path: Path, last: tuple[str, ...]) -> None:
    """Move every file of ``stage`` to the same place under ``path``; names in ``last`` move last."""
    files = sorted((p for p in stage.rglob("*") if p.is_file()),
                   key=lambda p: (p.name in last, str(p)))
    for f in files:
        target = path / f.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, *, merge: bool = False,
               last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path``; it becomes ``path`` on success.

    Writers write every file of a run into the yielded folder.  When the
    ``with`` block ends without an error the folder replaces ``path`` as one
    unit (``merge=False``: an existing folder at ``path`` is swapped out
    atomically and deleted, so a run never mixes with an older one), or its
    files are moved into ``path`` one by one (``merge=True``: other files in
    ``path`` stay; names in ``last`` move last, e.g. a manifest).  On an error
    or an interruption (``KeyboardInterrupt``, ``SystemExit``) ``path`` is left
    exactly as it was, the staging folder is removed, and so are parent
    folders created for it.

    Parameters
    ----------
    path : str or PathLike
        The folder to create or replace.  Its parent is created if missing.
    merge : bool
        Move files into ``path`` instead of replacing it.
    last : tuple of str
        With ``merge``: file names moved after all the others.

    Raises
    ------
    CycleULMError
        If ``path`` exists and is not a folder (before anything is written).
    """
    import shutil

    from .errors import CycleULMError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CycleULMError(f"{str(path)!r} exists and is a file, not a folder; choose a folder name.")
    created = _make_parents(path.parent)
    stage = None
    done = False
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)
        yield stage
        if merge:
            _merge_in(stage, path, last)
        else:
            _swap_in(stage, path)
        done = True
    finally:
        if stage is not None and stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            _remove_if_empty(created)
