"""Reading and writing CEUS stacks and localisation tables (headless).

Axis convention
---------------
Every stack returned here is ``(frames, height, width)`` = ``(T, H, W)``,
with ``H`` the axial (depth) axis and ``W`` the lateral axis.

* TIFF, NPY, zarr and plain HDF5 (``.h5``/``.hdf5`` written from Python) are
  read as stored: their arrays must already be ``(T, H, W)`` (or ``(H, W)``).
* MATLAB files (``.mat``, v5 and v7.3) follow MATLAB's usual ``(H, W, T)``
  order and become ``(T, H, W)``.  MATLAB v7.3 files are HDF5 files that
  store arrays transposed (an ``(H, W, T)`` MATLAB array is an HDF5 dataset of
  shape ``(T, W, H)``); that is undone here.  An HDF5 file with a MATLAB
  header is treated like a ``.mat`` file whatever its extension.

Complex IQ data (MAT v5 complex arrays, HDF5 compound ``real``/``imag``
datasets as Verasonics / PALA write them in MAT v7.3 files, complex
NPY/TIFF/zarr) is kept complex (complex64) with ``read_stack(...,
keep_phase=True)``, which is what the pipelines' SVD clutter filter needs;
otherwise it is converted to its magnitude (float32) with a warning.  Code that
needs intensities (display, PSF picking) gets them from :func:`magnitude`, a
lazy view for lazy stacks, and :meth:`LazyStack.block` / :func:`read_block`
return the magnitude of complex frames.

Zarr stores (``.zarr`` folders) are read lazily, chunk by chunk;
:func:`write_stack` writes them chunked along time (:data:`ZARR_CHUNK_BYTES`
per chunk), and :func:`to_dask` wraps any lazy stack as a dask array with
frame chunks, which is how the napari reader shows long acquisitions.

Supported extensions: ``.tif .tiff .npy .mat .h5 .hdf5 .zarr`` for stacks and
``.csv`` for tables.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..arrays import as_frames
from ..errors import CycleULMError
from .tables import Localisations, Tracks

__all__ = [
    "frame_range",
    "STACK_EXTENSIONS",
    "TABLE_EXTENSIONS",
    "LazyStack",
    "iter_blocks",
    "read_stack",
    "magnitude",
    "read_table",
    "to_dask",
    "write_stack",
    "FOLDER_EXTENSIONS",
    "ZARR_CHUNK_BYTES",
    "read_block",
]

log = logging.getLogger(__name__)

STACK_EXTENSIONS = (".tif", ".tiff", ".npy", ".mat", ".h5", ".hdf5", ".zarr")
#: Stack formats that are folders rather than files.
FOLDER_EXTENSIONS = (".zarr",)
#: Target size of one zarr chunk written by :func:`write_stack` (whole frames,
#: at least one): a few frames of a 511x659 acquisition, small enough that
#: showing one frame in napari reads little more than that frame.
ZARR_CHUNK_BYTES = 8 * 2**20
#: Frames read and written at a time by :func:`write_stack` (about this many bytes).
_WRITE_BLOCK_BYTES = 64 * 2**20
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
    chunk_frames : int, optional
        Frames per stored chunk when the format has chunks (zarr, chunked
        HDF5): the natural unit of a read, used by :func:`to_dask`.

    Notes
    -----
    A complex (IQ) stack keeps its complex dtype through indexing and
    ``numpy.asarray``; :meth:`block` returns its magnitude.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        dtype,
        read: Callable[[int, int], np.ndarray],
        close: Callable[[], None] | None = None,
        source: str = "",
        chunk_frames: int | None = None,
    ) -> None:
        self._shape = tuple(int(s) for s in shape)
        self._dtype = np.dtype(dtype)
        self._read = _reporting_reader(read, source)
        self._close = close
        self.source = source
        self.chunk_frames = None if chunk_frames is None else max(1, int(chunk_frames))
        self._warned_complex = False
        #: ``reopen()`` opens the same stack again (set by :func:`read_stack`; None: cannot).
        self.reopen: Callable[[], LazyStack] | None = None

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
    @property
    def is_complex(self) -> bool:
        """Whether the frames are complex IQ data."""
        return np.issubdtype(self._dtype, np.complexfloating)

    def block(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` as a float32 ``(stop - start, H, W)`` array.

        Complex (IQ) frames become their magnitude, with a warning the first
        time: code that reads blocks wants intensities, and an unfiltered IQ
        magnitude is dominated by tissue (run the clutter filter first).
        """
        n = self._shape[0]
        start, stop = max(0, int(start)), min(n, int(stop))
        if stop <= start:
            return np.empty((0, *self._shape[1:]), np.float32)
        data = self._read(start, stop)
        if self.is_complex:
            if not self._warned_complex:
                self._warned_complex = True
                _warn_complex(self.source or "the stack")
            return _magnitude(data)
        return np.asarray(data, dtype=np.float32)

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


def frame_range(stack, start: int, stop: int):
    """Frames ``start:stop`` of a stack, without reading them.

    A :class:`LazyStack` gives a LazyStack over the same file (which another
    process can re-open, like the original); arrays give their slice (a view,
    or a lazy slice of a dask / zarr array).

    Raises
    ------
    CycleULMError
        If the range is empty or outside the stack.
    """
    n = len(stack)
    start, stop = int(start), int(stop)
    if not (0 <= start < stop <= n):
        raise CycleULMError(f"frames {start}:{stop} are not inside a stack of {n} frames.")
    if not isinstance(stack, LazyStack):
        return stack[start:stop]
    out = LazyStack((stop - start, *stack.shape[1:]), stack.dtype,
                    lambda a, b: stack[start + a:start + b], source=stack.source,
                    chunk_frames=stack.chunk_frames)
    if stack.reopen is not None:
        out.reopen = functools.partial(_reopen_range, stack.reopen, start, stop)
    return out


def _reopen_range(reopen: Callable[[], LazyStack], start: int, stop: int) -> LazyStack:
    return frame_range(reopen(), start, stop)


def _in_memory(arr: np.ndarray, source: str = "") -> LazyStack:
    return LazyStack(arr.shape, arr.dtype, lambda a, b: arr[a:b], source=source)


def _is_lazy_array(obj) -> bool:
    """An array-like that reads on indexing (LazyStack, dask, zarr, h5py): never ``numpy.asarray`` it whole."""
    return (
        not isinstance(obj, np.ndarray)
        and all(hasattr(obj, a) for a in ("shape", "dtype", "__getitem__"))
        and len(getattr(obj, "shape", ())) == 3
    )


def magnitude(stack):
    """The envelope (magnitude) of complex IQ frames; real frames are returned unchanged.

    Parameters
    ----------
    stack : numpy.ndarray, LazyStack or array-like (dask, zarr), shape (T, H, W)
        Frames, complex (IQ) or real.

    Returns
    -------
    numpy.ndarray, LazyStack or dask array
        float32 magnitude of the same shape: a NumPy array for a NumPy input,
        a lazy view computed on indexing for a :class:`LazyStack` or another
        lazy array (a dask array stays a dask array).  Real input is returned
        as it is.

    Examples
    --------
    >>> import numpy as np
    >>> magnitude(np.full((1, 2, 2), 3 + 4j))[0, 0, 0]
    5.0
    """
    dtype = np.dtype(getattr(stack, "dtype", np.float32))
    if not (np.issubdtype(dtype, np.complexfloating) or _is_real_imag(dtype)):
        return stack
    if isinstance(stack, np.ndarray):
        return _magnitude(stack)
    if type(stack).__module__.startswith("dask"):
        return abs(stack).astype(np.float32)
    shape = tuple(int(s) for s in stack.shape)
    if len(shape) != 3:
        return _magnitude(np.asarray(stack))
    return LazyStack(shape, np.float32, lambda a, b: _magnitude(np.asarray(stack[a:b])),
                     source=getattr(stack, "source", ""),
                     chunk_frames=getattr(stack, "chunk_frames", None))


def _default_chunk_frames(shape, dtype, target_bytes: int = ZARR_CHUNK_BYTES) -> int:
    frame_bytes = max(1, int(np.prod(shape[1:])) * np.dtype(dtype).itemsize)
    return int(max(1, min(int(shape[0]), target_bytes // frame_bytes)))


def to_dask(stack, chunk_frames: int | None = None):
    """A ``(T, H, W)`` stack as a dask array chunked along time (whole frames per chunk).

    napari shows a dask array by computing only the chunk of the frame on
    screen, so scrolling a 25,000-frame acquisition reads a few frames per
    step instead of the file.

    Parameters
    ----------
    stack : LazyStack, numpy.ndarray or array-like (zarr, h5py), shape (T, H, W)
        Frames; not read here.
    chunk_frames : int, optional
        Frames per dask chunk; default the stack's stored chunk
        (``stack.chunk_frames``, e.g. a zarr chunk) or about
        :data:`ZARR_CHUNK_BYTES` of frames.

    Returns
    -------
    dask.array.Array
        Same shape and dtype; complex stays complex (see :func:`magnitude`).

    Raises
    ------
    CycleULMError
        If the stack is not 3-D or ``chunk_frames`` is not a positive whole number.
    """
    import dask.array as da

    if type(stack).__module__.startswith("dask"):
        return stack
    shape = tuple(int(s) for s in stack.shape)
    if len(shape) != 3:
        raise _shape_error("stack", shape)
    if chunk_frames is None:
        chunk_frames = getattr(stack, "chunk_frames", None) or _default_chunk_frames(shape, stack.dtype)
    if int(chunk_frames) != chunk_frames or chunk_frames < 1:
        raise CycleULMError(f"chunk_frames must be a whole number >= 1, got {chunk_frames}.")
    chunks = (min(int(chunk_frames), max(1, shape[0])), *shape[1:])
    # A LazyStack over one open TIFF / HDF5 handle must not be read from two
    # threads at once; lock=True serialises dask's reads of it.
    return da.from_array(stack, chunks=chunks, lock=isinstance(stack, LazyStack),
                         asarray=True, meta=np.empty((0, 0, 0), stack.dtype),
                         name=f"cycleulm-stack-{uuid.uuid4().hex}")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _check_path(path) -> Path:
    p = Path(path)
    ext = p.suffix.lower()
    if ext in FOLDER_EXTENSIONS:
        if not p.exists():
            raise CycleULMError(f"{str(p)!r} does not exist.")
        if not p.is_dir():
            raise CycleULMError(f"{str(p)!r} is not a zarr store (a folder); write one with write_stack.")
        if not os.access(p, os.R_OK | os.X_OK):
            raise CycleULMError(f"{str(p)!r} cannot be read (permission denied).")
        return p
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


def _complex64(block: np.ndarray) -> np.ndarray:
    """Complex or compound ``real``/``imag`` data as complex64 (the phase kept)."""
    if block.dtype.names:
        out = np.empty(block.shape, np.complex64)
        out.real = block["real"]
        out.imag = block["imag"]
        return out
    return np.asarray(block, dtype=np.complex64)


def _iq(block: np.ndarray, keep_phase: bool) -> np.ndarray:
    """A block of complex IQ data: complex64 with ``keep_phase``, else its float32 magnitude."""
    return _complex64(block) if keep_phase else _magnitude(block)


def _finish_eager(arr: np.ndarray, path, what="", mat_order=False, keep_phase=False) -> np.ndarray:
    """Complex -> complex64 or magnitude, MATLAB (H, W, T) -> (T, H, W), 2-D -> one frame."""
    if np.iscomplexobj(arr) or _is_real_imag(arr.dtype):
        if not keep_phase:
            _warn_complex(path)
        arr = _iq(arr, keep_phase)
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
def _read_tiff(path: Path, lazy: bool, keep_phase: bool = False):
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
            if cplx and not keep_phase:
                _warn_complex(path)

            def read(a, b):
                out = np.stack([pages[i].asarray() for i in range(a, b)])
                return _iq(out, keep_phase) if cplx else out

            dtype = (np.complex64 if keep_phase else np.float32) if cplx else series.dtype
            return LazyStack(shape, dtype, read, close=tif.close, source=str(path))
        tif.close()  # unusual layout: read it whole
    with tifffile.TiffFile(path) as tif:
        arr = tif.series[0].asarray()
    arr = _finish_eager(arr, path, keep_phase=keep_phase)
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
        from .._resources import format_bytes

        raise CycleULMError(
            f"{path} is truncated or its header is wrong: it declares shape {tuple(shape)} of "
            f"{dtype} ({format_bytes(need)}) but holds {format_bytes(have)}; re-save the array."
        )
    if fortran:
        return None
    return shape, dtype, offset


def _read_npy(path: Path, lazy: bool, keep_phase: bool = False):
    layout = _npy_layout(path)  # checks the declared size against the file first
    if not lazy:
        layout = None
    if layout is not None and len(layout[0]) in (2, 3) and layout[1].kind in "biufc":
        shape, dtype, offset = layout
        shape = (1, *shape) if len(shape) == 2 else tuple(shape)
        per_frame = int(np.prod(shape[1:]))
        cplx = dtype.kind == "c"
        if cplx and not keep_phase:
            _warn_complex(path)

        def read(a, b):
            # Plain reads (no memory map), so resident memory stays one block.
            data = np.fromfile(path, dtype=dtype, count=(b - a) * per_frame,
                               offset=offset + a * per_frame * dtype.itemsize)
            data = data.reshape((b - a, *shape[1:]))
            return _iq(data, keep_phase) if cplx else data

        out_dtype = (np.complex64 if keep_phase else np.float32) if cplx else dtype
        return LazyStack(shape, out_dtype, read, source=str(path))
    try:
        arr = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise CycleULMError(f"{path} is not a plain numeric .npy array ({exc}).") from None
    if lazy and arr.ndim in (2, 3) and not np.iscomplexobj(arr):
        view = arr[None] if arr.ndim == 2 else arr
        return LazyStack(view.shape, view.dtype, lambda a, b: np.asarray(view[a:b]), source=str(path))
    arr = _finish_eager(np.asarray(arr), path, keep_phase=keep_phase)
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


def _read_mat_v5(path: Path, variable, lazy: bool, keep_phase: bool = False):
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
    arr = _finish_eager(np.asarray(arr), path, f" variable {name!r}", mat_order=True,
                        keep_phase=keep_phase)
    return _in_memory(arr, str(path)) if lazy else arr


def _read_hdf5(path: Path, variable, lazy: bool, mat_order: bool, keep_phase: bool = False):
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
        if cplx and not keep_phase:
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
                raw = _iq(raw, keep_phase)
            return np.ascontiguousarray(raw.transpose(0, 2, 1)) if mat_order else raw

        dtype = (np.complex64 if keep_phase else np.float32) if cplx else ds.dtype
        if lazy:
            chunks = ds.chunks if len(h5shape) == 3 else None
            return LazyStack((n, *frame_shape), dtype, read, close=f.close, source=str(path),
                             chunk_frames=chunks[0] if chunks else None)
        out = read(0, n)
    except BaseException:
        f.close()
        raise
    f.close()
    return out


def _zarr_arrays(node, prefix: str = ""):
    """``(path, array)`` of every array in a zarr group, recursively (zarr 2 and 3)."""
    for name, arr in node.arrays():
        yield prefix + name, arr
    for name, grp in node.groups():
        yield from _zarr_arrays(grp, prefix + name + "/")


def _read_zarr(path: Path, variable, lazy: bool, keep_phase: bool = False):
    import zarr

    root = zarr.open(str(path), mode="r")
    what = ""
    if hasattr(root, "arrays"):  # a group: pick an array as in an HDF5 file
        found = {}
        for name, arr in _zarr_arrays(root):
            dt = np.dtype(arr.dtype)
            if np.issubdtype(dt, np.number) or dt == bool or _is_real_imag(dt):
                found[name] = arr
        cands = [(n, tuple(a.shape), int(np.prod(a.shape)) if a.shape else 0) for n, a in found.items()]
        if variable is not None:
            variable = str(variable).strip("/")
        name = _pick_variable(cands, variable, path)
        arr, what = found[name], f" array {name!r}"
    else:
        if variable is not None:
            raise CycleULMError(
                f"{path} holds a single array, not a group; variable= (--variable) does not apply."
            )
        arr = root
    dt = np.dtype(arr.dtype)
    if not (np.issubdtype(dt, np.number) or dt == bool or _is_real_imag(dt)):
        raise CycleULMError(f"{path}{what} holds non-numeric data (dtype {dt}).")
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) not in (2, 3):
        raise _shape_error(path, shape, what)
    cplx = np.issubdtype(dt, np.complexfloating) or _is_real_imag(dt)
    if cplx and not keep_phase:
        _warn_complex(path)
    two_d = len(shape) == 2

    def read(a, b):
        raw = np.asarray(arr[...])[None] if two_d else np.asarray(arr[a:b])
        return _iq(raw, keep_phase) if cplx else raw

    n = 1 if two_d else shape[0]
    frame_shape = shape if two_d else shape[1:]
    dtype = (np.complex64 if keep_phase else np.float32) if cplx else dt
    chunk_frames = None if two_d else int(arr.chunks[0])
    stack = LazyStack((n, *frame_shape), dtype, read, source=str(path), chunk_frames=chunk_frames)
    return stack if lazy else np.asarray(stack)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
def read_stack(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    lazy: bool = False,
    keep_phase: bool = False,
):
    """Read a CEUS or IQ stack as ``(frames, height, width)``.

    Parameters
    ----------
    path : str or PathLike
        ``.tif``/``.tiff``, ``.npy``, ``.mat`` (v5 or v7.3), ``.h5``/``.hdf5``
        or a ``.zarr`` store (a folder).
    variable : str, optional
        Variable (MAT), dataset path (HDF5) or array path (zarr group) to
        read.  By default the largest 3-D numeric variable.  A 2-D variable
        becomes a single frame.
    lazy : bool
        Return a :class:`LazyStack` reading frames on demand (NPY, per-page
        TIFF, HDF5 datasets and zarr chunks are read as needed); MAT v5 files
        are loaded whole and wrapped.
    keep_phase : bool
        Keep complex IQ data complex (complex64), e.g. for the SVD clutter
        filter of the pipelines.  Default False: complex data becomes its
        magnitude (float32) with a warning.  Real data is unaffected.

    Returns
    -------
    numpy.ndarray or LazyStack
        Shape ``(T, H, W)``; pixel values as stored, complex input as
        complex64 (``keep_phase``) or its float32 magnitude.  See the module
        docstring for the axis convention of MATLAB files (``(H, W, T)``, e.g.
        PALA's ``IQ(z, x, t)``, becomes ``(T, H, W)``).

    Examples
    --------
    >>> iq = read_stack("IQ.mat", lazy=True, keep_phase=True)  # doctest: +SKIP
    >>> iq.dtype, iq.shape  # doctest: +SKIP
    (dtype('complex64'), (25000, 511, 659))

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
            ".mat": "a MATLAB file", ".zarr": "a zarr store"}.get(ext, "an HDF5 file")
    keep_phase = bool(keep_phase)
    try:
        if ext in (".tif", ".tiff"):
            out = _read_tiff(p, lazy, keep_phase)
        elif ext == ".npy":
            out = _read_npy(p, lazy, keep_phase)
        elif ext == ".zarr":
            out = _read_zarr(p, variable, lazy, keep_phase)
        elif _is_hdf5(p):
            mat_order = ext == ".mat" or _has_matlab_header(p)
            out = _read_hdf5(p, variable, lazy, mat_order, keep_phase)
        elif ext == ".mat":
            out = _read_mat_v5(p, variable, lazy, keep_phase)
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
    if isinstance(out, LazyStack):
        # How another process (a dask worker) opens the same stack: by absolute path.
        out.reopen = functools.partial(read_stack, str(p.resolve()), variable=variable, lazy=True,
                                       keep_phase=keep_phase)
    return out


def _frame_source(frames, complex_ok: bool):
    """``(shape, dtype written, read(a, b))`` of frames to write: an array, LazyStack or lazy array."""
    if isinstance(frames, LazyStack) or _is_lazy_array(frames):
        src = frames
        dtype = np.dtype(src.dtype)
    else:
        src = np.asarray(frames)
        if src.ndim == 2:
            src = src[None]
        if src.ndim != 3:
            raise _shape_error("frames", src.shape)
        dtype = src.dtype
    cplx = np.issubdtype(dtype, np.complexfloating) or _is_real_imag(dtype)
    if cplx and not complex_ok:
        raise CycleULMError(
            "frames are complex (IQ); write them to .npy or .zarr, which keep the phase, "
            "or write their magnitude (io.magnitude) to TIFF."
        )
    if not cplx and (dtype == object or not (np.issubdtype(dtype, np.number) or dtype == bool)):
        raise CycleULMError(f"frames must be numeric, got dtype {dtype}.")
    shape = tuple(int(s) for s in src.shape)
    out_dtype = np.dtype(np.complex64 if cplx else np.float32)

    def read(a: int, b: int) -> np.ndarray:
        blk = np.asarray(src[a:b])
        return _complex64(blk) if cplx else blk.astype(np.float32, copy=False)

    return shape, out_dtype, read


def write_stack(path: str | os.PathLike, frames, *, chunk_frames: int | None = None) -> None:
    """Write a stack as TIFF, NPY or a zarr store chunked along time, atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination; the extension chooses the format: ``.tif``/``.tiff``
        (float32), ``.npy`` (float32, or complex64 for IQ data) or ``.zarr``
        (a folder holding one array ``(T, H, W)``, float32 or complex64,
        compressed, in chunks of ``chunk_frames`` whole frames).
    frames : array_like, LazyStack or lazy array (dask, zarr), shape (T, H, W) or (H, W)
        Frames to write.  Lazy stacks are written block by block without
        loading them whole.
    chunk_frames : int, optional
        zarr only: frames per chunk; default about :data:`ZARR_CHUNK_BYTES`
        of frames.  A read of a few frames then decompresses only their chunks.

    Raises
    ------
    CycleULMError
        On an unsupported extension, data that is not 2-D / 3-D numeric,
        complex data for a TIFF, or a bad ``chunk_frames``.

    Examples
    --------
    >>> import numpy as np
    >>> write_stack("iq.zarr", np.ones((40, 8, 8), np.complex64), chunk_frames=10)  # doctest: +SKIP
    >>> read_stack("iq.zarr", lazy=True, keep_phase=True).chunk_frames  # doctest: +SKIP
    10
    """
    import tifffile

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".tif", ".tiff", ".npy", ".zarr"):
        raise CycleULMError(
            f"cannot write a stack to {str(p)!r}; use a .tif, .tiff, .npy or .zarr name."
        )
    if chunk_frames is not None and (int(chunk_frames) != chunk_frames or chunk_frames < 1):
        raise CycleULMError(f"chunk_frames must be a whole number >= 1, got {chunk_frames}.")
    shape, dtype, read = _frame_source(frames, complex_ok=ext in (".npy", ".zarr"))
    if ext == ".zarr":
        _write_zarr(p, shape, dtype, read, chunk_frames)
        return
    n = shape[0]
    step = _default_chunk_frames(shape, dtype, _WRITE_BLOCK_BYTES)
    with atomic_path(p) as tmp:
        if ext == ".npy":
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            for a in range(0, n, step):
                out[a:a + step] = read(a, min(n, a + step))
            out.flush()
            del out
        else:
            tifffile.imwrite(
                tmp,
                (read(i, i + 1)[0] for i in range(n)),
                shape=shape,
                dtype=np.float32,
                photometric="minisblack",
            )


def _write_zarr(p: Path, shape, dtype, read, chunk_frames) -> None:
    import zarr

    from .._atomic import staged_dir

    n = shape[0]
    chunk = int(chunk_frames) if chunk_frames is not None else _default_chunk_frames(shape, dtype)
    chunk = max(1, min(chunk, n))
    # Whole chunks per write, as many as fit in one write block, so memory
    # stays one block and no chunk is written twice.
    step = chunk * max(1, _default_chunk_frames(shape, dtype, _WRITE_BLOCK_BYTES) // chunk)
    with staged_dir(p) as tmp:
        arr = zarr.open_array(store=str(tmp), mode="w", shape=shape, chunks=(chunk, *shape[1:]),
                              dtype=dtype)
        arr.attrs.update({"axes": ["t", "y", "x"], "writer": "napari-cycleulm"})
        for a in range(0, n, step):
            b = min(n, a + step)
            arr[a:b] = read(a, b)


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

    Complex (IQ) frames become their magnitude, with a warning.

    Raises
    ------
    CycleULMError
        If the block holds NaN or infinite values (see :func:`arrays.as_frames`).
    """
    if isinstance(stack, LazyStack):
        blk = stack.block(start, stop)
    else:
        blk = np.asarray(stack[start:stop])
        if np.iscomplexobj(blk) or _is_real_imag(blk.dtype):
            _warn_complex("the stack")
            blk = _magnitude(blk)
        blk = blk.astype(np.float32, copy=False)
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
    stack : numpy.ndarray, LazyStack or lazy array (dask, zarr), shape (T, H, W) (or (H, W))
        Frames to iterate over; a lazy stack is read one block at a time.
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
    if not (isinstance(stack, LazyStack) or _is_lazy_array(stack)):
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
