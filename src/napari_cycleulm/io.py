"""Reading and writing CEUS stacks and localisation tables (headless).

Axis convention
---------------
Every stack returned here is ``(frames, height, width)`` = ``(T, H, W)``,
with ``H`` the axial (depth) axis and ``W`` the lateral axis.

* TIFF, NPY and plain HDF5 (``.h5``/``.hdf5`` written from Python) are read
  as stored: their arrays must already be ``(T, H, W)`` (or ``(H, W)``).
* MATLAB files (``.mat``, v5 and v7.3) follow MATLAB's usual ``(H, W, T)``
  order and become ``(T, H, W)``.  MATLAB v7.3 files are HDF5 files that
  store arrays transposed (an ``(H, W, T)`` MATLAB array is an HDF5 dataset of
  shape ``(T, W, H)``); that is undone here.  An HDF5 file with a MATLAB
  header is treated like a ``.mat`` file whatever its extension.

Complex IQ data (MAT v5 complex arrays, HDF5 compound ``real``/``imag``
datasets, complex NPY/TIFF) is converted to its magnitude with a warning.

Supported extensions: ``.tif .tiff .npy .mat .h5 .hdf5`` for stacks and
``.csv`` for tables.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .arrays import as_frames
from .errors import CycleULMError
from .tables import Localisations, Tracks

__all__ = [
    "STACK_EXTENSIONS",
    "TABLE_EXTENSIONS",
    "LazyStack",
    "iter_blocks",
    "read_stack",
    "read_table",
    "write_stack",
]

log = logging.getLogger(__name__)

STACK_EXTENSIONS = (".tif", ".tiff", ".npy", ".mat", ".h5", ".hdf5")
TABLE_EXTENSIONS = (".csv",)
_COMPLEX_NOTE = (
    "complex IQ data: using its magnitude; run the SVD clutter filter on the IQ "
    "data first if it is not clutter-filtered yet"
)


# --------------------------------------------------------------------------
# Lazy stacks
# --------------------------------------------------------------------------
class LazyStack:
    """A read-only ``(T, H, W)`` stack whose frames are read on demand.

    Indexing follows NumPy for the first (frame) axis (int, slice, integer
    list/array) with any further indices applied to the frames read, so
    napari can display it directly; ``numpy.asarray(stack)`` reads everything.

    Parameters
    ----------
    shape : (int, int, int)
        ``(T, H, W)`` of the stack.
    dtype : numpy.dtype
        dtype of the frames returned.
    read : callable
        ``read(start, stop) -> ndarray (stop - start, H, W)`` for
        ``0 <= start < stop <= T``, already in ``(T, H, W)`` order and
        ``dtype``.
    close : callable, optional
        Releases the underlying file.
    source : str, optional
        Path of the file, for messages.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        dtype,
        read: Callable[[int, int], np.ndarray],
        close: Callable[[], None] | None = None,
        source: str = "",
    ) -> None:
        self._shape = tuple(int(s) for s in shape)
        self._dtype = np.dtype(dtype)
        self._read = _reporting_reader(read, source)
        self._close = close
        self.source = source

    # array-like protocol ----------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self._shape))

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"LazyStack(shape={self._shape}, dtype={self._dtype}, source={self.source!r})"

    def __array__(self, dtype=None, copy=None):
        out = self._read(0, self._shape[0]) if self._shape[0] else np.empty(self._shape, self._dtype)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - (len(key) - 1))
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-D stack: {key}")
        first, rest = (key[0] if key else slice(None)), key[1:]
        n = self._shape[0]
        if isinstance(first, (int, np.integer)):
            i = int(first)
            if i < -n or i >= n:
                raise IndexError(f"frame index {i} out of range for {n} frames")
            i %= n
            return self._read(i, i + 1)[0][rest]
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            idx = np.arange(start, stop, step)
        else:
            idx = np.asarray(first)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"frame index out of range for {n} frames")
        if idx.size == 0:
            return np.empty((0, *self._shape[1:]), self._dtype)[(slice(None), *rest)]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if idx.size and (hi - lo) <= 4 * idx.size:
            data = self._read(lo, hi)[idx - lo]
        else:
            data = np.stack([self._read(int(i), int(i) + 1)[0] for i in idx])
        return data[(slice(None), *rest)]

    # convenience ------------------------------------------------------------
    def block(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` as a float32 ``(stop - start, H, W)`` array."""
        n = self._shape[0]
        start, stop = max(0, int(start)), min(n, int(stop))
        if stop <= start:
            return np.empty((0, *self._shape[1:]), np.float32)
        return np.asarray(self._read(start, stop), dtype=np.float32)

    def close(self) -> None:
        """Release the underlying file (further reads may fail)."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> LazyStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reporting_reader(read: Callable[[int, int], np.ndarray], source: str):
    """``read`` with failures of a damaged file turned into a :class:`CycleULMError` naming it."""

    def checked(a: int, b: int) -> np.ndarray:
        try:
            return read(a, b)
        except (CycleULMError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - every reader library raises its own types
            raise CycleULMError(
                f"{source or 'the stack'}: frames {a}-{b - 1} could not be read "
                f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt."
            ) from None

    return checked


def _in_memory(arr: np.ndarray, source: str = "") -> LazyStack:
    return LazyStack(arr.shape, arr.dtype, lambda a, b: arr[a:b], source=source)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _check_path(path) -> Path:
    p = Path(path)
    ext = p.suffix.lower()
    if p.is_dir():
        raise CycleULMError(f"{str(p)!r} is a directory; give the file inside it to read.")
    if ext not in STACK_EXTENSIONS + TABLE_EXTENSIONS:
        raise CycleULMError(
            f"unsupported file type {ext or '(no extension)'!r} for {str(p)!r}; supported: "
            f"{' '.join(STACK_EXTENSIONS)} (stacks) and {' '.join(TABLE_EXTENSIONS)} (tables)."
        )
    if p.is_dir():
        raise CycleULMError(f"{str(p)!r} is a directory; give the file inside it to read.")
    if not p.exists():
        raise CycleULMError(f"file {str(p)!r} does not exist.")
    if not p.is_file():
        raise CycleULMError(f"{str(p)!r} is not a regular file.")
    if not os.access(p, os.R_OK):
        raise CycleULMError(f"{str(p)!r} cannot be read (permission denied).")
    return p


def _warn_complex(path) -> None:
    warnings.warn(f"{path}: {_COMPLEX_NOTE}.", UserWarning, stacklevel=3)
    log.info("%s: %s", path, _COMPLEX_NOTE)


def _shape_error(path, shape, what="") -> CycleULMError:
    return CycleULMError(
        f"{path}{what} has shape {tuple(shape)}; expected a 3-D stack of frames "
        "(frames, height, width) for TIFF/NPY/HDF5, (height, width, frames) for MATLAB "
        "files, or a single 2-D image."
    )


def _is_real_imag(dtype: np.dtype) -> bool:
    names = dtype.names or ()
    return {"real", "imag"} <= set(names)


def _magnitude(block: np.ndarray) -> np.ndarray:
    if block.dtype.names:
        re = block["real"].astype(np.float64)
        im = block["imag"].astype(np.float64)
        return np.hypot(re, im).astype(np.float32)
    return np.abs(block).astype(np.float32)


def _finish_eager(arr: np.ndarray, path, what="", mat_order=False) -> np.ndarray:
    """Complex -> magnitude, MATLAB (H, W, T) -> (T, H, W), 2-D -> one frame."""
    if np.iscomplexobj(arr) or _is_real_imag(arr.dtype):
        _warn_complex(path)
        arr = _magnitude(arr)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise CycleULMError(f"{path}{what} holds non-numeric data (dtype {arr.dtype}).")
    if arr.ndim not in (2, 3):
        raise _shape_error(path, arr.shape, what)
    if mat_order:
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        arr = np.moveaxis(arr, 2, 0)
    elif arr.ndim == 2:
        arr = arr[None]
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------
# Format readers
# --------------------------------------------------------------------------
def _read_tiff(path: Path, lazy: bool):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes
    # Interleaved samples (..YXS) are colour; planar samples (SYX) are what
    # tifffile writes for 3- or 4-frame stacks by default: read those as frames.
    if axes.endswith("S"):
        raise CycleULMError(
            f"{path} is a colour (RGB) TIFF with axes {axes!r}; save the CEUS "
            "frames as a greyscale (frames, height, width) stack."
        )
    if lazy:
        # Page by page with ordinary reads, not a memory map: mapped pages that
        # were touched count in the process's resident memory, which would then
        # grow with the acquisition instead of staying at one block.
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        shape = tuple(series.shape)
        pages = series.pages
        if len(shape) == 3 and len(pages) == shape[0] and "S" not in series.axes:
            cplx = np.issubdtype(series.dtype, np.complexfloating)
            if cplx:
                _warn_complex(path)

            def read(a, b):
                out = np.stack([pages[i].asarray() for i in range(a, b)])
                return _magnitude(out) if cplx else out

            dtype = np.float32 if cplx else series.dtype
            return LazyStack(shape, dtype, read, close=tif.close, source=str(path))
        tif.close()  # unusual layout: read it whole
    with tifffile.TiffFile(path) as tif:
        arr = tif.series[0].asarray()
    arr = _finish_eager(arr, path)
    return _in_memory(arr, str(path)) if lazy else arr


def _npy_layout(path: Path):
    """``(shape, dtype, data offset)`` of a C-ordered .npy file, or None."""
    with open(path, "rb") as fh:
        try:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
        except ValueError:
            return None
        offset = fh.tell()
    if dtype.hasobject or dtype.kind not in "biufc":
        raise CycleULMError(
            f"{path} holds non-numeric data (dtype {dtype}); save the frames as numbers."
        )
    need = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = os.path.getsize(path)
    if have < need:
        from ._resources import format_bytes

        raise CycleULMError(
            f"{path} is truncated or its header is wrong: it declares shape {tuple(shape)} of "
            f"{dtype} ({format_bytes(need)}) but holds {format_bytes(have)}; re-save the array."
        )
    if fortran:
        return None
    return shape, dtype, offset


def _read_npy(path: Path, lazy: bool):
    layout = _npy_layout(path)  # checks the declared size against the file first
    if not lazy:
        layout = None
    if layout is not None and len(layout[0]) in (2, 3) and layout[1].kind in "biuf":
        shape, dtype, offset = layout
        shape = (1, *shape) if len(shape) == 2 else tuple(shape)
        per_frame = int(np.prod(shape[1:]))

        def read(a, b):
            # Plain reads (no memory map), so resident memory stays one block.
            data = np.fromfile(path, dtype=dtype, count=(b - a) * per_frame,
                               offset=offset + a * per_frame * dtype.itemsize)
            return data.reshape((b - a, *shape[1:]))

        return LazyStack(shape, dtype, read, source=str(path))
    try:
        arr = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise CycleULMError(f"{path} is not a plain numeric .npy array ({exc}).") from None
    if lazy and arr.ndim in (2, 3) and not np.iscomplexobj(arr):
        view = arr[None] if arr.ndim == 2 else arr
        return LazyStack(view.shape, view.dtype, lambda a, b: np.asarray(view[a:b]), source=str(path))
    arr = _finish_eager(np.asarray(arr), path)
    return _in_memory(arr, str(path)) if lazy else arr


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _has_matlab_header(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(6) == b"MATLAB"


def _describe(cands: list[tuple[str, tuple]]) -> str:
    return ", ".join(f"{n} {tuple(s)}" for n, s in cands) or "none"


def _pick_variable(cands: list[tuple[str, tuple, int]], variable, path) -> str:
    """Choose the largest 3-D variable, or check the requested one."""
    shown = [(n, s) for n, s, _ in cands]
    if variable is not None:
        if variable not in [n for n, _, _ in cands]:
            raise CycleULMError(
                f"{path} has no numeric variable {variable!r}; numeric variables: "
                f"{_describe(shown)}; pass one of them as variable= (command line: --variable NAME)."
            )
        return variable
    three = [(size, n) for n, s, size in cands if len(s) == 3]
    if not three:
        raise CycleULMError(
            f"{path} holds no 3-D numeric variable (a stack of frames); numeric variables: "
            f"{_describe(shown)}. To read a 2-D one as a single frame, name it: variable='name' "
            "(command line: --variable NAME)."
        )
    if len(three) > 1:
        log.info("%s: several 3-D variables, using the largest", path)
    return max(three)[1]


def _read_mat_v5(path: Path, variable, lazy: bool):
    import scipy.io

    try:
        info = scipy.io.whosmat(path)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types
        raise CycleULMError(f"{path} could not be read as a MATLAB file ({exc}).") from None
    numeric = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32",
               "int64", "uint64", "logical"}
    cands = [(n, tuple(s), int(np.prod(s))) for n, s, c in info if c in numeric]
    name = _pick_variable(cands, variable, path)
    arr = scipy.io.loadmat(path, variable_names=[name], squeeze_me=False)[name]
    arr = _finish_eager(np.asarray(arr), path, f" variable {name!r}", mat_order=True)
    return _in_memory(arr, str(path)) if lazy else arr


def _read_hdf5(path: Path, variable, lazy: bool, mat_order: bool):
    import h5py

    f = h5py.File(path, "r")
    try:
        cands: list[tuple[str, tuple, int]] = []

        def visit(name, obj):
            if name.startswith("#refs#") or not isinstance(obj, h5py.Dataset):
                return
            dt = obj.dtype
            if np.issubdtype(dt, np.number) or dt == bool or _is_real_imag(dt):
                shape = tuple(obj.shape)[::-1] if mat_order else tuple(obj.shape)
                cands.append((name, shape, int(np.prod(shape)) if shape else 0))

        f.visititems(visit)
        if variable is not None:
            variable = str(variable).lstrip("/")
        name = _pick_variable(cands, variable, path)
        ds = f[name]
        what = f" variable {name!r}"
        # MATLAB's (H, W, T) is stored as (T, W, H): each stored [t] is a
        # transposed (W, H) frame.
        h5shape = tuple(ds.shape)
        if len(h5shape) not in (2, 3):
            shown = h5shape[::-1] if mat_order else h5shape
            raise _shape_error(path, shown, what)
        cplx = _is_real_imag(ds.dtype) or np.issubdtype(ds.dtype, np.complexfloating)
        if cplx:
            _warn_complex(path)
        if len(h5shape) == 2:
            frame_shape = h5shape[::-1] if mat_order else h5shape
            n = 1
        else:
            frame_shape = h5shape[1:][::-1] if mat_order else h5shape[1:]
            n = h5shape[0]

        def read(a, b):
            raw = ds[()] if len(h5shape) == 2 else ds[a:b]
            if len(h5shape) == 2:
                raw = raw[None]
            if cplx:
                raw = _magnitude(raw)
            return np.ascontiguousarray(raw.transpose(0, 2, 1)) if mat_order else raw

        dtype = np.float32 if cplx else ds.dtype
        if lazy:
            return LazyStack((n, *frame_shape), dtype, read, close=f.close, source=str(path))
        out = read(0, n)
    except BaseException:
        f.close()
        raise
    f.close()
    return out


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
def read_stack(path: str | os.PathLike, *, variable: str | None = None, lazy: bool = False):
    """Read a CEUS stack as ``(frames, height, width)``.

    Parameters
    ----------
    path : str or PathLike
        ``.tif``/``.tiff``, ``.npy``, ``.mat`` (v5 or v7.3) or ``.h5``/``.hdf5``.
    variable : str, optional
        Variable (MAT) or dataset path (HDF5) to read.  By default the largest
        3-D numeric variable.  A 2-D variable becomes a single frame.
    lazy : bool
        Return a :class:`LazyStack` reading frames on demand (memory-mapped
        TIFF/NPY, per-page TIFF, HDF5 datasets); MAT v5 files are loaded whole
        and wrapped.

    Returns
    -------
    numpy.ndarray or LazyStack
        Shape ``(T, H, W)``; pixel values as stored (complex input becomes its
        magnitude, float32).  See the module docstring for the axis convention
        of MATLAB files (``(H, W, T)`` becomes ``(T, H, W)``).

    Raises
    ------
    CycleULMError
        Missing file, a directory, unsupported extension (the message lists the
        supported ones), a damaged or mislabelled file, a ``.npy`` header that
        declares more data than the file holds, non-numeric data, an empty
        stack, a file with no 3-D variable (the message lists the candidates),
        an unknown ``variable``, or data that is not 2-D / 3-D.  Frames of a
        lazy stack that turn out unreadable later raise it too, naming the file.
    """
    p = _check_path(path)
    ext = p.suffix.lower()
    if ext in TABLE_EXTENSIONS:
        raise CycleULMError(
            f"{str(p)!r} is a table; read it with read_table. Stacks must be one of "
            f"{' '.join(STACK_EXTENSIONS)}."
        )
    if variable is not None and ext in (".tif", ".tiff", ".npy"):
        raise CycleULMError(
            f"variable= (--variable) only applies to .mat and HDF5 files, not {str(p)!r}."
        )
    kind = {".tif": "a TIFF", ".tiff": "a TIFF", ".npy": "a NumPy .npy array",
            ".mat": "a MATLAB file"}.get(ext, "an HDF5 file")
    try:
        if ext in (".tif", ".tiff"):
            out = _read_tiff(p, lazy)
        elif ext == ".npy":
            out = _read_npy(p, lazy)
        elif _is_hdf5(p):
            mat_order = ext == ".mat" or _has_matlab_header(p)
            out = _read_hdf5(p, variable, lazy, mat_order)
        elif ext == ".mat":
            out = _read_mat_v5(p, variable, lazy)
        else:
            raise CycleULMError(f"{str(p)!r} is not a valid HDF5 file.")
    except (CycleULMError, KeyboardInterrupt):
        raise
    except MemoryError:
        raise CycleULMError(
            f"{str(p)!r} does not fit in memory; read it lazily (the command line does) or crop it."
        ) from None
    except Exception as exc:  # noqa: BLE001 - tifffile, h5py, scipy and numpy raise many types
        raise CycleULMError(
            f"{str(p)!r} could not be read as {kind} ({type(exc).__name__}: {exc}); "
            "the file is damaged or not what its extension says."
        ) from None
    if 0 in tuple(out.shape):
        raise CycleULMError(
            f"{str(p)!r} holds no frames (shape {tuple(out.shape)}); expected a "
            "(frames, height, width) stack with at least one frame."
        )
    return out


def write_stack(path: str | os.PathLike, frames) -> None:
    """Write a stack as float32 TIFF (``.tif``/``.tiff``) or NPY (``.npy``), atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination; the extension chooses the format.
    frames : array_like or LazyStack, shape (T, H, W) or (H, W)
        Frames to write (converted to float32).  A LazyStack is written frame
        by frame without loading it whole.

    Raises
    ------
    CycleULMError
        On an unsupported extension or data that is not 2-D / 3-D numeric.
    """
    import tifffile

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".tif", ".tiff", ".npy"):
        raise CycleULMError(
            f"cannot write a stack to {str(p)!r}; use a .tif, .tiff or .npy file name."
        )
    if isinstance(frames, LazyStack):
        shape = frames.shape
        src = frames
    else:
        arr = np.asarray(frames)
        if np.iscomplexobj(arr):
            raise CycleULMError("frames are complex; write their magnitude (numpy.abs) instead.")
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise CycleULMError(f"frames must be numeric, got dtype {arr.dtype}.")
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise _shape_error("frames", arr.shape)
        shape = arr.shape
        src = arr
    with atomic_path(p) as tmp:
        if ext == ".npy":
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            for a, b, blk in iter_blocks(src, 64):
                out[a:b] = blk
            out.flush()
            del out
        elif isinstance(src, LazyStack):
            tifffile.imwrite(
                tmp,
                (src.block(i, i + 1)[0] for i in range(shape[0])),
                shape=shape,
                dtype=np.float32,
                photometric="minisblack",
            )
        else:
            tifffile.imwrite(tmp, src.astype(np.float32, copy=False), photometric="minisblack")


def _csv_header(path: Path) -> list[str]:
    from .tables import _iter_csv_rows

    for row in _iter_csv_rows(path):
        if any(cell.strip() for cell in row):
            return [h.strip().lower() for h in row]
    return []


def read_table(path: str | os.PathLike) -> Localisations | Tracks:
    """Read a CSV table of localisations or tracks.

    Parameters
    ----------
    path : str or PathLike
        CSV with a header row holding at least ``frame, y, x`` (pixels,
        0-based frames); with a ``track_id`` column it is read as tracks.

    Returns
    -------
    Localisations or Tracks
        :class:`Tracks` when a ``track_id`` column exists, else
        :class:`Localisations`.

    Raises
    ------
    CycleULMError
        Missing file, non-CSV extension, missing columns or non-numeric values.
    """
    p = _check_path(path)
    if p.suffix.lower() not in TABLE_EXTENSIONS:
        raise CycleULMError(
            f"{str(p)!r} is not a table; tables must be .csv files (stacks: "
            f"{' '.join(STACK_EXTENSIONS)})."
        )
    cls = Tracks if "track_id" in _csv_header(p) else Localisations
    return cls.from_csv(p)


def read_block(stack, start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of an array or :class:`LazyStack`, checked, as float32 (T, H, W).

    Raises
    ------
    CycleULMError
        If the block holds NaN or infinite values (see :func:`arrays.as_frames`).
    """
    if isinstance(stack, LazyStack):
        blk = stack.block(start, stop)
    else:
        blk = np.asarray(stack[start:stop], dtype=np.float32)
    return as_frames(blk, name=f"frames {start}-{stop - 1}")


def iter_blocks(
    stack, block_size: int, overlap: int = 0
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Iterate over a stack in blocks of frames.

    Each item is ``(start, stop, block)`` with ``block`` equal to
    ``stack[start:stop]`` as float32 ``(stop - start, H, W)``.  Consecutive
    blocks share ``overlap`` frames (the next block starts at
    ``stop - overlap``); the blocks cover every frame and the last one ends at
    ``T``.

    Parameters
    ----------
    stack : numpy.ndarray or LazyStack, shape (T, H, W) (or (H, W))
        Frames to iterate over.
    block_size : int
        Frames per block (the last block may be shorter), >= 1.
    overlap : int
        Frames shared by consecutive blocks, ``0 <= overlap < block_size``.

    Yields
    ------
    (int, int, numpy.ndarray)
        ``start``, ``stop`` (frame indices) and the float32 block.

    Raises
    ------
    CycleULMError
        On a bad ``block_size`` / ``overlap`` or a stack that is not 2-D / 3-D.
    """
    if int(block_size) != block_size or block_size < 1:
        raise CycleULMError(f"block_size must be a whole number >= 1, got {block_size}.")
    if int(overlap) != overlap or not 0 <= overlap < block_size:
        raise CycleULMError(
            f"overlap must be a whole number with 0 <= overlap < block_size ({block_size}), "
            f"got {overlap}."
        )
    block_size, overlap = int(block_size), int(overlap)
    if not isinstance(stack, LazyStack):
        stack = np.asarray(stack)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3:
            raise _shape_error("stack", stack.shape)
    n = stack.shape[0]
    start = 0
    while start < n:
        stop = min(n, start + block_size)
        yield start, stop, read_block(stack, start, stop)
        if stop >= n:
            break
        start = stop - overlap
