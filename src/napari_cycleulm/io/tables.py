"""Column tables of localisations and tracks, with CSV round trips.

Positions are ``(frame, y, x)`` in pixels, with ``(0, 0)`` the centre of the
top-left pixel; ``frame`` is a 0-based frame index.  Extra columns (``score``,
``intensity``, uncertainties, ``track_id``...) ride along unchanged.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._atomic import atomic_path
from ..errors import CycleULMError

#: Columns stored as integers; every other column is float64.
INTEGER_COLUMNS = ("frame", "track_id", "sequence")


def _as_column(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if name in INTEGER_COLUMNS:
        if arr.size and np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
                raise CycleULMError(f"column {name!r} must hold whole numbers.")
        return arr.astype(np.int64)
    return arr.astype(np.float64)


def _read_csv_rows(path: Path) -> list[list[str]]:
    """All rows of a UTF-8 CSV file; every failure is a :class:`CycleULMError` naming the file."""
    return list(_iter_csv_rows(path))


def _iter_csv_rows(path: Path):
    """Rows of a UTF-8 CSV file, read lazily (see :func:`_read_csv_rows`)."""
    path = Path(path)
    if path.is_dir():
        raise CycleULMError(f"table {str(path)!r} is a directory; give the .csv file inside it.")
    if not path.exists():
        raise CycleULMError(f"table file {str(path)!r} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            yield from csv.reader(fh)
    except UnicodeDecodeError as exc:
        raise CycleULMError(
            f"table {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
            f"position {exc.start}); save it as a UTF-8 CSV."
        ) from None
    except csv.Error as exc:
        raise CycleULMError(f"table {str(path)!r} is not a readable CSV ({exc}).") from None
    except OSError as exc:
        raise CycleULMError(f"table {str(path)!r} cannot be read ({exc.strerror or exc}).") from None


@dataclass
class PointTable:
    """A table of points with named columns of equal length.

    Parameters
    ----------
    columns : dict of str to array_like
        One 1-D array per column; must include the class's required columns.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("frame", "y", "x")
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cols = {str(k): _as_column(str(k), v) for k, v in dict(self.columns).items()}
        given = bool(cols)
        for name in self.REQUIRED:
            if name not in cols:
                if given:
                    raise CycleULMError(
                        f"{type(self).__name__} needs a {name!r} column; got columns "
                        f"{sorted(cols)}."
                    )
                cols[name] = _as_column(name, [])
        # Required columns first, in their canonical order.
        ordered = {n: cols[n] for n in self.REQUIRED}
        ordered.update({n: c for n, c in cols.items() if n not in ordered})
        lengths = {n: len(c) for n, c in ordered.items()}
        if len(set(lengths.values())) > 1:
            raise CycleULMError(f"columns have different lengths: {lengths}.")
        self.columns = ordered

    # -- basic access -----------------------------------------------------
    def __len__(self) -> int:
        return len(self.columns[self.REQUIRED[0]])

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(
                f"{type(self).__name__} has no column {name!r}; columns are {self.names}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    @property
    def names(self) -> list[str]:
        """Column names, required columns first."""
        return list(self.columns)

    @property
    def positions(self) -> np.ndarray:
        """``(N, 3)`` float array of ``(frame, y, x)`` in pixels."""
        return np.stack(
            [self["frame"].astype(np.float64), self["y"], self["x"]], axis=1
        ).reshape(-1, 3)

    def with_columns(self, **columns) -> PointTable:
        """Return a copy with columns added or replaced."""
        cols = dict(self.columns)
        cols.update(columns)
        return type(self)(cols)

    def select(self, index) -> PointTable:
        """Rows chosen by a boolean mask or an integer index array."""
        return type(self)({n: c[index] for n, c in self.columns.items()})

    def in_frames(self, start: int, stop: int) -> PointTable:
        """Rows with ``start <= frame < stop``."""
        f = self["frame"]
        return self.select((f >= start) & (f < stop))

    def sort(self, *keys: str) -> PointTable:
        """Rows sorted lexicographically by ``keys`` (first key is primary)."""
        keys = keys or ("frame",)
        order = np.lexsort([self[k] for k in reversed(keys)])
        return self.select(order)

    @classmethod
    def concat(cls, tables) -> PointTable:
        """Stack tables row-wise; columns missing in some tables become NaN (or -1)."""
        tables = [t for t in tables if t is not None]
        if not tables:
            return cls()
        names: list[str] = []
        for t in tables:
            names += [n for n in t.names if n not in names]
        cols = {}
        for n in names:
            parts = []
            for t in tables:
                if n in t:
                    parts.append(t[n])
                else:
                    fill = -1 if n in INTEGER_COLUMNS else np.nan
                    parts.append(np.full(len(t), fill))
            cols[n] = np.concatenate(parts) if parts else []
        return cls(cols)

    # -- CSV ----------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the table as CSV with a header row, atomically."""
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                self._write(fh)

    def to_csv_string(self) -> str:
        buf = io.StringIO()
        self._write(buf)
        return buf.getvalue()

    def _write(self, fh) -> None:
        writer = csv.writer(fh)
        writer.writerow(self.names)
        if len(self) == 0:
            return
        formatted = []
        for n, c in self.columns.items():
            if n in INTEGER_COLUMNS:
                formatted.append(c.astype(str))
            else:
                formatted.append(np.char.mod("%.6g", c))
        writer.writerows(zip(*formatted))

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> PointTable:
        """Read a CSV written by :meth:`to_csv` (or any CSV with the required columns).

        Column names are matched case-insensitively; ``axis-0``/``axis-1``/
        ``axis-2`` (napari's Points export) are read as ``frame``, ``y``, ``x``.

        Raises
        ------
        CycleULMError
            If the file is missing, a directory, not UTF-8, lacks a required
            column, holds non-numeric values, negative frame numbers or
            non-finite positions (the message names the file).
        """
        path = Path(path)
        rows = _read_csv_rows(path)
        rows = [r for r in rows if r and any(cell.strip() for cell in r)]
        if not rows:
            raise CycleULMError(f"{str(path)!r} is empty; expected a header row with {cls.REQUIRED}.")
        aliases = {"axis-0": "frame", "axis-1": "y", "axis-2": "x", "t": "frame", "z": "frame"}
        header = [h.strip().lower() for h in rows[0]]
        header = [aliases.get(h, h) for h in header]
        missing = [n for n in cls.REQUIRED if n not in header]
        if missing:
            raise CycleULMError(
                f"{str(path)!r} lacks column(s) {missing}; its header is {rows[0]}. "
                f"Expected at least {list(cls.REQUIRED)} (pixels, 0-based frames)."
            )
        body = rows[1:]
        cols = {}
        for j, name in enumerate(header):
            if not name or name in ("index", "") or name.startswith("unnamed"):
                continue
            try:
                cols[name] = np.array([float(r[j]) if r[j].strip() else np.nan for r in body])
            except (ValueError, IndexError) as exc:
                raise CycleULMError(
                    f"{str(path)!r}: column {name!r} holds a non-numeric or missing value ({exc})."
                ) from None
        try:
            table = cls(cols)
        except CycleULMError as exc:
            raise CycleULMError(f"{str(path)!r}: {exc}") from None
        frames = table["frame"]
        if len(frames) and frames.min() < 0:
            row = int(np.argmax(frames < 0)) + 2  # 1-based, after the header
            raise CycleULMError(
                f"{str(path)!r}: frame numbers must be >= 0 (0-based frame indices), got "
                f"{int(frames.min())} (line {row}); fix the table or re-export it."
            )
        for name in ("y", "x"):
            bad = ~np.isfinite(table[name])
            if bad.any():
                row = int(np.argmax(bad)) + 2
                raise CycleULMError(
                    f"{str(path)!r}: column {name!r} holds an empty, NaN or infinite position "
                    f"(line {row}); every point needs finite pixel coordinates."
                )
        return table

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} rows, columns={self.names})"


class Localisations(PointTable):
    """Microbubble localisations: ``frame, y, x`` (pixels) plus ``intensity``,
    ``score`` and method-specific columns."""

    REQUIRED = ("frame", "y", "x")


class Tracks(PointTable):
    """Microbubble tracks: ``track_id, frame, y, x`` (pixels) plus ``vy, vx``
    (pixels per frame) and any extra columns."""

    REQUIRED = ("track_id", "frame", "y", "x")

    @property
    def n_tracks(self) -> int:
        """Number of distinct track ids."""
        return int(np.unique(self["track_id"]).size)

    def lengths(self) -> dict[int, int]:
        """Number of points in each track."""
        ids, counts = np.unique(self["track_id"], return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist()))


class TableWriter:
    """Write a CSV table block by block, atomically.

    Rows are appended to a temporary file beside ``path``; the file appears
    at ``path`` only when the ``with`` block ends without an error, so an
    interrupted run never leaves a truncated table (nor destroys an older
    one).  Memory stays independent of the table's length.

    Examples
    --------
    >>> with TableWriter("tracks.csv") as out:          # doctest: +SKIP
    ...     for block in blocks:
    ...         out.write(block_tracks)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        columns: list[str] | None = None,
        table_type: type[PointTable] = PointTable,
    ):
        self.path = Path(path)
        self.table_type = table_type
        self.columns = list(columns) if columns else None
        self.n_rows = 0
        self._ctx = None
        self._fh = None
        self._writer = None

    def __enter__(self) -> TableWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        if self.columns is not None:
            self._writer.writerow(self.columns)
        return self

    def write(self, table: PointTable) -> None:
        """Append the rows of ``table`` (its columns must match the first table's)."""
        if self.columns is None:
            self.columns = table.names
            self._writer.writerow(self.columns)
        if len(table) == 0:
            return
        missing = [c for c in self.columns if c not in table]
        if missing:
            raise CycleULMError(f"table lacks column(s) {missing} expected in {self.path.name}.")
        sub = type(table)({c: table[c] for c in self.columns})
        text = sub.to_csv_string().split("\n", 1)[1]
        self._fh.write(text)
        self.n_rows += len(table)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._fh.close()
        if exc_type is None and self.columns is None:
            # No rows at all: still write a valid header.
            with open(self._fh.name, "w", encoding="utf-8") as fh:
                fh.write(",".join(self.table_type.REQUIRED) + "\n")
        return bool(self._ctx.__exit__(exc_type, exc, tb))
