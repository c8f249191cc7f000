"""Checks on output paths, made before any work: type, permission, overwriting, inputs.

The rules (shared by the command line and the library's writers):

* an output never is, nor contains, one of the inputs (it would destroy it);
* an existing output is replaced only when asked (``--overwrite``), and an
  existing folder only when it is the kind of folder the command writes
  (a run folder holds ``run.json``), so a mistyped ``--out`` cannot delete
  unrelated files;
* a file output is not an existing directory (and vice versa), and its folder
  (or the nearest existing ancestor) is writable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import CycleULMError


def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(p).expanduser())).resolve()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (hard links and symlinks included)."""
    try:
        if Path(a).exists() and Path(b).exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return _resolved(a) == _resolved(b)


def _inputs(inputs: Iterable) -> list[Path]:
    out = []
    for i in inputs:
        if i is None or (isinstance(i, str) and (not i or i.lower() in ("auto", "default", "none"))):
            continue
        if isinstance(i, (str, os.PathLike)):
            out.append(Path(i))
    return out


def check_not_input(out: str | os.PathLike, inputs: Iterable, *, option: str = "--out",
                    folder: bool = False) -> None:
    """Refuse an output that is one of ``inputs`` (or, for a folder, contains one).

    Parameters
    ----------
    out : path
        The output file or folder.
    inputs : iterable of path or None
        Input files and folders (None, ``"auto"`` and ``"default"`` are skipped).
    option : str
        Name of the output option, for the message.
    folder : bool
        ``out`` is a folder that will be replaced: inputs inside it count too.

    Raises
    ------
    CycleULMError
        Naming the input and what to do.
    """
    out_r = _resolved(out)
    for inp in _inputs(inputs):
        if same_file(out, inp):
            raise CycleULMError(
                f"{option} {str(out)!r} is also an input; writing it would destroy the input. "
                "Choose another output name."
            )
        if folder and out_r in _resolved(inp).parents:
            raise CycleULMError(
                f"{option} {str(out)!r} contains the input {str(inp)!r}, which replacing the "
                "folder would destroy. Choose an output folder that holds no input."
            )


def check_writable_folder(folder: str | os.PathLike, option: str = "--out") -> None:
    """Refuse a folder that cannot be created or written (nearest existing ancestor checked)."""
    q = _resolved(folder)
    while not q.exists() and q.parent != q:
        q = q.parent
    if not q.is_dir():
        raise CycleULMError(
            f"{option}: {str(q)!r} is a file, so no folder can be made under it; choose another path."
        )
    if not os.access(q, os.W_OK | os.X_OK):
        raise CycleULMError(
            f"{option}: cannot write in {str(q)!r} (permission denied); choose a writable location."
        )


def check_output_file(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False,
                      option: str = "--out", suffixes: tuple[str, ...] | None = None) -> Path:
    """Check a file to be written, before any work.

    Parameters
    ----------
    path : path
        The file to write.
    inputs : iterable of path
        Files the command reads; the output must be none of them.
    overwrite : bool
        Allow replacing an existing file.
    option : str
        Name of the option, for messages.
    suffixes : tuple of str, optional
        Accepted extensions (lower case, with the dot).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    CycleULMError
        If ``path`` is a directory, has the wrong extension, is an input,
        exists without ``overwrite``, or its folder is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise CycleULMError(
            f"{option} {str(p)!r} is a directory; give a file name"
            + (f" ending in {' or '.join(suffixes)}" if suffixes else "") + "."
        )
    if suffixes and p.suffix.lower() not in suffixes:
        raise CycleULMError(
            f"{option} must be a {' or '.join(suffixes)} file, got {str(p)!r}."
        )
    check_not_input(p, inputs, option=option)
    if p.exists() and not overwrite:
        raise CycleULMError(
            f"{option} {str(p)!r} already exists; pass --overwrite to replace it, or choose another name."
        )
    check_writable_folder(p.parent, option)
    return p


def check_output_dir(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False,
                     option: str = "--out", marker: str | None = "run.json",
                     kind: str = "`cycleulm run`", replace: bool = True) -> Path:
    """Check a folder to be written, before any work.

    Parameters
    ----------
    path : path
        The folder.
    inputs : iterable of path
        Files the command reads; the folder must be none of them nor contain one
        (when ``replace``).
    overwrite : bool
        Allow replacing (``replace``) or adding to an existing non-empty folder.
    option : str
        Name of the option, for messages.
    marker : str, optional
        A file (or folder) that identifies a folder this command wrote; with
        ``replace``, a non-empty folder without it is never replaced.
    kind : str
        What writes such folders, for the message.
    replace : bool
        The folder is replaced as a whole (True) or files are added to it.

    Raises
    ------
    CycleULMError
        If ``path`` is a file, is or contains an input, is a non-empty folder
        without ``overwrite`` (or without ``marker``), or is not writable.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CycleULMError(f"{option} {str(p)!r} is a file; give a folder name.")
    check_not_input(p, inputs, option=option, folder=replace)
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            what = "replace it as a whole" if replace else "replace files in it"
            raise CycleULMError(
                f"{option} {str(p)!r} already exists and is not empty; pass --overwrite to {what}, "
                "or choose a new folder."
            )
        if replace and marker is not None and not (p / marker).exists():
            raise CycleULMError(
                f"{option} {str(p)!r} is not a folder written by {kind} (it has no {marker}), so it "
                "is not replaced even with --overwrite; choose a new folder."
            )
    check_writable_folder(p.parent, option)
    if p.exists():
        check_writable_folder(p, option)
    return p
