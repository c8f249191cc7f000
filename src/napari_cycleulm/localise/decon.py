"""Localisation by sparsity-based deconvolution (after Yan et al. 2022).

Each frame ``y`` (``H x W``) is explained as a sparse, non-negative map of
point scatterers ``x`` on a grid ``upsampling`` times finer, blurred by the PSF
and sampled at the pixel centres:

    ``min_x 0.5 ||y - A x||^2 + lam ||x||_1,  x >= 0``

solved with FISTA (Beck & Teboulle 2009) in torch.  Peaks of ``x`` are the
bubbles.

Speed: the problem is local (the PSF reaches a few sigma, ``r`` pixels), and
the frames the pipelines deconvolve are sparse (thresholded CEUS, gated
MB-only frames).  With ``x >= 0`` FISTA's iterates stay 0 farther than ``r``
from the data, so each group of data pixels (pixels closer than about ``r``
are one group) is solved on its own, with ``x`` kept within a few pixels of
the group (:class:`_Regions`):

* small groups (most of them) with dense matrices: ``A^T A`` of the group's
  cell box is one Gram matrix shared by every box of that size, so a FISTA
  step of a whole batch of groups is one matrix product (:class:`_DenseOp`);
* larger groups on periodic FFT patches of the group plus the kernel reach;
* groups larger than two tiles (dense data), and ``nonneg=False``, on
  overlapping tiles (overlap = the kernel reach) solved in small cache-sized
  batches, keeping only the tile cores.

Groups and tiles that cannot hold a bubble above ``skip_below`` are not solved.
The per-frame threshold comes from ``A^T y`` of the whole frame.  On the
pipelines' 511 x 659 frames this is several times faster on CPU than the tiled
solve it replaced, with the same detections (``benchmarks/decon_speed.py``).

Reference: J. Yan, T. Zhang, J. Broughton-Venner, P. Huang, M.-X. Tang,
"Super-resolution ultrasound through sparsity-based deconvolution and
multi-feature tracking", IEEE Trans. Med. Imaging 41(8), 2022.

Grid convention: with pixel centres at integer coordinates, fine-grid cell
``k`` (factor ``u``) sits at original coordinate ``(k - (u - 1) / 2) / u``, so
the ``u`` cells of pixel ``i`` are centred on ``i``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, signal

from ..arrays import as_frames
from ..device import resolve_device
from ..errors import CycleULMError
from ..psf import PSF, gaussian_kernel
from ..io.tables import Localisations
from ._common import check_kernel_fits, fast_len, psf_kernel
from .peaks import find_peaks

__all__ = ["localise_decon", "deconvolve", "fine_to_pixel"]

#: Default FISTA stopping tolerance on the relative change of a tile's map.
DEFAULT_TOL = 1e-3
#: Default tile size in pixels (cores are this minus twice the kernel reach).
DEFAULT_TILE = 64
#: Groups of data with at most this many fine-grid cells (``u^2`` per pixel)
#: are solved with dense Gram matrices (see :class:`_DenseOp`); larger ones on
#: FFT patches.  Border groups build their own matrix, hence a lower limit.
DENSE_CELLS = 1600
DENSE_CELLS_BORDER = 1024


def fine_to_pixel(k, upsampling: int):
    """Original-pixel coordinate of fine-grid index ``k`` (``(k - (u-1)/2) / u``)."""
    u = int(upsampling)
    return (np.asarray(k, dtype=np.float64) - (u - 1) / 2.0) / u


def _fine_kernel(psf, kernel: np.ndarray, u: int) -> tuple[np.ndarray, int, int]:
    """PSF on the fine grid, shifted so that ``(x * h)[i u]`` samples pixel ``i``.

    ``h[a, b] = g((a - cy + (u-1)/2) / u, (b - cx + (u-1)/2) / u)`` where ``g`` is
    the PSF in original pixels centred at 0; returns ``(h, cy, cx)``.
    """
    kh, kw = kernel.shape
    cy = int(np.ceil((kh - 1) / 2.0 * u)) + u
    cx = int(np.ceil((kw - 1) / 2.0 * u)) + u
    shift = (u - 1) / 2.0
    if isinstance(psf, PSF):
        h = gaussian_kernel(
            psf.sigma_y_px * u,
            psf.sigma_x_px * u,
            psf.theta_rad,
            size=(2 * cy + 1, 2 * cx + 1),
            center=(cy - shift, cx - shift),
        )
    else:
        a = (np.arange(2 * cy + 1) - cy + shift) / u + (kh - 1) / 2.0
        b = (np.arange(2 * cx + 1) - cx + shift) / u + (kw - 1) / 2.0
        aa, bb = np.meshgrid(a, b, indexing="ij")
        h = ndimage.map_coordinates(
            kernel.astype(np.float64), [aa, bb], order=3, mode="constant", cval=0.0
        ).astype(np.float32)
    return h, cy, cx


def _lipschitz(h: np.ndarray, u: int) -> float:
    """An upper bound of ``||A||^2``, tight for non-negative kernels.

    ``A A^T`` is (away from the borders) a convolution on the pixel grid with
    the kernel's autocorrelation sampled every ``u`` cells; its largest gain is
    at most the sum of the absolute values of that kernel, and restricting it
    to a finite (or periodic, masked) tile can only lower it.
    """
    k = h.astype(np.float64)
    ac = signal.fftconvolve(k, k[::-1, ::-1], mode="full")
    kh, kw = k.shape
    return float(np.abs(ac[(kh - 1) % u :: u, (kw - 1) % u :: u]).sum())


_TAIL = 1e-4


def _polyphase(h: np.ndarray, cy: int, cx: int, u: int):
    """Polyphase components ``g_ab[n, m] = h[n u - a + cy, m u - b + cx]``.

    Returns ``(g, ny, nx)`` with ``g`` of shape ``(u^2, 2 ny + 1, 2 nx + 1)``
    (index ``n + ny``), trimmed to the rows / columns where any component is
    non-zero, so ``ny, nx`` are the kernel's reach in pixels.
    """
    ny = (cy + u) // u + 1
    nx = (cx + u) // u + 1
    n = np.arange(-ny, ny + 1)
    m = np.arange(-nx, nx + 1)
    g = np.zeros((u * u, n.size, m.size), np.float64)
    for a in range(u):
        ia = n * u - a + cy
        va = (ia >= 0) & (ia < h.shape[0])
        for b in range(u):
            ib = m * u - b + cx
            vb = (ib >= 0) & (ib < h.shape[1])
            vals = h[np.clip(ia, 0, h.shape[0] - 1)][:, np.clip(ib, 0, h.shape[1] - 1)]
            g[a * u + b] = vals * (va[:, None] & vb[None, :])
    # Drop the far tails (< 1e-4 of the peak, below the 4-sigma truncation of
    # the model kernel along its wider axis): they cost margin and FFT work.
    floor = _TAIL * np.abs(g).max()
    nzy = np.flatnonzero(np.abs(g).max(axis=(0, 2)) > floor) - ny
    nzx = np.flatnonzero(np.abs(g).max(axis=(0, 1)) > floor) - nx
    ry = int(max(1, np.abs(nzy).max())) if nzy.size else 1
    rx = int(max(1, np.abs(nzx).max())) if nzx.size else 1
    return g[:, ny - ry : ny + ry + 1, nx - rx : nx + rx + 1], ry, rx


class _TileOp:
    """``A`` (blur on the fine grid, sample every ``u``-th cell) and ``A^T`` on tiles.

    Works in the polyphase layout: the fine map is kept as its ``u^2`` phase
    images ``x_ab[i, j] = x[i u + a, j u + b]`` (``pixel_unshuffle``) and
    ``A x = sum_ab x_ab * g_ab``.  The convolutions are *periodic* FFTs on the
    ``(ty, tx)`` tile: the tiles overlap by at least the kernel reach, only
    their cores are kept, and a pixel mask reproduces the frame borders
    (no scatterers outside the frame, no data term there), so no zero padding
    is needed.  Small tiles keep the FFTs in cache (about 3x faster per pixel
    than whole-frame FFTs on CPU).
    """

    def __init__(self, g: np.ndarray, ry: int, rx: int, tile: tuple[int, int], device):
        ty, tx = tile
        uu = g.shape[0]
        k = np.zeros((uu, ty, tx), np.float64)
        iy = np.arange(-ry, ry + 1) % ty
        ix = np.arange(-rx, rx + 1) % tx
        for c in range(uu):
            np.add.at(k[c], np.ix_(iy, ix), g[c])
        self.size = (ty, tx)
        self.gf = torch.fft.rfft2(torch.from_numpy(k.astype(np.float32)).to(device))
        self.gfc = self.gf.conj()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Phases ``(N, u^2, ty, tx)`` -> frames ``(N, ty, tx)``."""
        xf = torch.fft.rfft2(x)
        return torch.fft.irfft2((xf * self.gf).sum(dim=1), s=self.size)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """Frames ``(N, ty, tx)`` -> phases ``(N, u^2, ty, tx)``."""
        rf = torch.fft.rfft2(r)
        return torch.fft.irfft2(rf[:, None] * self.gfc, s=self.size)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x`` without the round trip through pixel space (unmasked tiles)."""
        xf = torch.fft.rfft2(x)
        yf = (xf * self.gf).sum(dim=1, keepdim=True)
        return torch.fft.irfft2(yf * self.gfc, s=self.size)


class _Tiling:
    """Overlapping tiles over zero-padded frames.

    Frames are padded by ``(my, mx)`` (the kernel reach) on every side; tile
    ``(p, q)`` covers padded rows ``[p cy, p cy + ty)`` and owns the core
    ``[p cy, (p + 1) cy)`` of original rows (likewise along x).
    """

    def __init__(self, shape: tuple[int, int], reach: tuple[int, int], tile_size: int):
        self.h, self.w = shape
        self.my, self.mx = reach
        self.ty, self.cy, self.ny = self._axis(self.h, self.my, tile_size)
        self.tx, self.cx, self.nx = self._axis(self.w, self.mx, tile_size)

    @staticmethod
    def _axis(n: int, m: int, tile_size: int) -> tuple[int, int, int]:
        t = max(int(tile_size), 4 * m)
        if n + 2 * m <= 3 * t:  # small enough for one cache-friendly tile
            t = fast_len(n + 2 * m)
            return t, t - 2 * m, 1
        t = fast_len(t)
        c = t - 2 * m
        return t, c, -(-n // c)

    def split(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` -> ``(B, ny, nx, ty, tx)`` tile views (zero outside)."""
        b = frames.shape[0]
        hp = self.ny * self.cy + 2 * self.my
        wp = self.nx * self.cx + 2 * self.mx
        pad = frames.new_zeros((b, hp, wp))
        pad[:, self.my : self.my + self.h, self.mx : self.mx + self.w] = frames
        return pad.unfold(1, self.ty, self.cy).unfold(2, self.tx, self.cx)

    def core(self, t: torch.Tensor) -> torch.Tensor:
        """Cores ``(..., cy, cx)`` of tiles ``(..., ty, tx)``."""
        return t[..., self.my : self.my + self.cy, self.mx : self.mx + self.cx]


def _fista(gram, aty, cell_mask, thr, L, n_iter, nonneg, tol, check_every=5):
    """FISTA on a batch of independent problems; each stops once its relative change < ``tol``.

    ``gram(z, idx)`` returns ``A^T A z`` for the problems ``idx`` (indices into
    the batch) still running; ``aty``: ``A^T y`` ``(N, ...)``; ``cell_mask``:
    where ``x`` may be non-zero (broadcast against ``aty``), None for
    everywhere; ``thr``: ``(N,)`` soft threshold (already divided by ``L``).
    Returns ``x`` shaped like ``aty``.
    """
    n_iter = int(n_iter)
    thr = thr.reshape((-1,) + (1,) * (aty.ndim - 1))
    # v = z - (A^T A z - A^T y) / L; keep b = A^T y / L (- thr) so the step is
    # one fused pass over z.
    b = aty / L
    if nonneg:
        b = b - thr
    x = torch.zeros_like(aty)
    z = x
    t = 1.0
    out = None
    idx = torch.arange(aty.shape[0], device=aty.device)
    for k in range(n_iter):
        v = torch.add(z, gram(z, idx), alpha=-1.0 / L).add_(b)
        if nonneg:
            x_new = v.clamp_min_(0)
        else:
            x_new = torch.sign(v) * (v.abs() - thr).clamp_min_(0)
        if cell_mask is not None:
            x_new *= cell_mask
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        if tol > 0 and k < n_iter - 1 and (k + 1) % check_every == 0:
            dx = (x_new - x).flatten(1).norm(dim=1)
            done = dx <= tol * x_new.flatten(1).norm(dim=1)
            if bool(done.any()):
                if out is None:
                    out = torch.zeros_like(x_new)
                out[idx[done]] = x_new[done]
                keep = ~done
                if not bool(keep.any()):
                    return out
                idx, x_new, x, thr, b = (a[keep] for a in (idx, x_new, x, thr, b))
                if cell_mask is not None and cell_mask.shape[0] > 1:
                    cell_mask = cell_mask[keep]
        # z = x_new + c (x_new - x), reusing x's storage (x is not needed again).
        c = (t - 1.0) / t_new
        z = x_new if c == 0 or k == 0 else x.sub_(x_new).mul_(-c).add_(x_new)
        x, t = x_new, t_new
    if out is None:
        return x
    out[idx] = x
    return out


def _fista_tiles(op, y, pixel_mask, cell_mask, thr, L, n_iter, nonneg, tol, aty=None):
    """FISTA on a batch of periodic tiles (or patches) with :class:`_TileOp` ``op``.

    ``y``: ``(N, ty, tx)``; ``pixel_mask``: ``(N, ty, tx)`` pixels of the data
    term (those inside the frame), None for all; ``cell_mask``:
    ``(N, 1, ty, tx)`` cells where ``x`` may be non-zero, None for all;
    ``thr``: ``(N,)``.  Returns the phases ``(N, u^2, ty, tx)``.
    """
    if aty is None:
        aty = op.adjoint(y)
    if pixel_mask is None:
        # A^T A is then one Fourier multiplier (8 FFTs per iteration instead of 10).
        def gram(z, idx):
            return op.gram(z)
    else:
        def gram(z, idx):
            return op.adjoint(op.forward(z) * pixel_mask[idx])
    return _fista(gram, aty, cell_mask, thr, L, n_iter, nonneg, tol)


class _DenseOp:
    """``A`` and ``A^T A`` as matrices on a small box of ``(hy, hx)`` pixels of cells.

    ``x`` is the ``u^2 hy hx`` phases of the box (order phase, row, column);
    the pixels are the box grown by the kernel reach, so nothing wraps around.
    For a few hundred cells one matrix product per FISTA iteration (and per
    batch of boxes) replaces the FFTs of a patch several times as large.
    """

    def __init__(self, g: np.ndarray, corr: np.ndarray, ry: int, rx: int, hy: int, hx: int, device):
        uu = g.shape[0]
        self.box = (hy, hx)
        self.pix = (hy + 2 * ry, hx + 2 * rx)
        # A[(py, px), (c, jy, jx)] = g[c, py - jy, px - jx] (pixel box starts r before the cells).
        # Gathered straight into the (py, px, c, jy, jx) order from g padded by a
        # zero row / column (read for offsets outside the kernel).
        gz = np.pad(g.astype(np.float32), ((0, 0), (0, 1), (0, 1)))
        dy = np.arange(self.pix[0])[:, None] - np.arange(hy)[None, :]
        dx = np.arange(self.pix[1])[:, None] - np.arange(hx)[None, :]
        dy = np.where((dy >= 0) & (dy <= 2 * ry), dy, 2 * ry + 1)
        dx = np.where((dx >= 0) & (dx <= 2 * rx), dx, 2 * rx + 1)
        c = np.arange(uu)
        a = gz[c[None, None, :, None, None], dy[:, None, None, :, None], dx[None, :, None, None, :]]
        self.A = torch.from_numpy(a.reshape(self.pix[0] * self.pix[1], uu * hy * hx)).to(device)
        # A^T A from the kernel's cross-correlations: G[(c, j), (d, k)] = corr[c, d, j - k + 2r].
        # Gathered straight into the (c, jy, jx, d, ky, kx) order; corr is 0-padded
        # by one row / column so that lags beyond 2 r read a zero.
        cz = np.pad(corr.astype(np.float32), ((0, 0), (0, 0), (0, 1), (0, 1)))
        ly = np.arange(hy)[:, None] - np.arange(hy)[None, :] + 2 * ry
        lx = np.arange(hx)[:, None] - np.arange(hx)[None, :] + 2 * rx
        ly = np.where((ly >= 0) & (ly <= 4 * ry), ly, 4 * ry + 1)
        lx = np.where((lx >= 0) & (lx <= 4 * rx), lx, 4 * rx + 1)
        c = np.arange(uu)
        G = cz[c[:, None, None, None, None, None], c[None, None, None, :, None, None],
               ly[None, :, None, None, :, None], lx[None, None, :, None, None, :]]
        n = uu * hy * hx
        self.G = torch.from_numpy(G.reshape(n, n)).to(device)


def _cross_correlations(g: np.ndarray) -> np.ndarray:
    """``corr[c, d, D + 2r] = sum_q g[c, q] g[d, q + D]`` for the polyphase kernels ``g``."""
    uu, ky, kx = g.shape
    corr = np.zeros((uu, uu, 2 * ky - 1, 2 * kx - 1))
    for c in range(uu):
        for d in range(uu):
            corr[c, d] = signal.fftconvolve(g[d], g[c][::-1, ::-1], mode="full")
    return corr


class _Regions:
    """Patches around the groups of data pixels of a block of frames.

    With ``x >= 0`` and ``x = 0`` to start, FISTA's iterates stay 0 on every
    cell farther than the kernel reach ``r`` from the data (there ``A^T y = 0``
    and ``-A^T A z <= 0``), and in practice the map ends within a pixel of the
    data.  So each group of data pixels is solved on its own patch: ``x`` is
    kept within ``m`` (``x_reach``, a few pixels) of the group's bounding box,
    and the patch adds the kernel reach ``r`` of pixels around that, so its
    periodic FFTs see no wrap-around.  Data pixels closer than about ``r`` to
    each other are one group; farther groups interact only through PSF tails
    below ~1e-3 of the peak on both sides.
    """

    def __init__(self, y: torch.Tensor, reach: tuple[int, int], x_reach: tuple[int, int]):
        b, h, w = y.shape
        ry, rx = reach
        my, mx = x_reach
        sup = (y != 0).cpu().numpy()
        gy, gx = -(-ry // 2), -(-rx // 2)
        grown = ndimage.maximum_filter(sup, size=(1, 2 * gy + 1, 2 * gx + 1))
        plane = np.zeros((3, 3, 3), bool)
        plane[1] = True  # 8-connected within a frame, never across frames
        labels, n = ndimage.label(grown, structure=plane)
        boxes = ndimage.find_objects(np.where(sup, labels, 0), max_label=n)
        box = np.array([(s[0].start, s[1].start, s[1].stop, s[2].start, s[2].stop) for s in boxes],
                       dtype=np.int64).reshape(-1, 5)
        self.labels = torch.from_numpy(labels.astype(np.int32)).to(y.device)
        self.ids = np.arange(1, n + 1, dtype=np.int64)
        self.frame = box[:, 0]
        # Cells [y0 - m, y1 + m) may be non-zero; the patch starts r pixels before.
        self.cell_y = (box[:, 1] - my, box[:, 2] + my)
        self.cell_x = (box[:, 3] - mx, box[:, 4] + mx)
        self.oy = self.cell_y[0] - ry
        self.ox = self.cell_x[0] - rx
        self.sy = np.array([fast_len(e + 2 * (my + ry)) for e in box[:, 2] - box[:, 1]], np.int64)
        self.sx = np.array([fast_len(e + 2 * (mx + rx)) for e in box[:, 4] - box[:, 3]], np.int64)
        # Every pixel the cells reach is inside the frame: no border mask, and
        # A^T A is one Fourier multiplier.
        self.inner = ((self.oy >= 0) & (self.cell_y[1] + ry <= h)
                      & (self.ox >= 0) & (self.cell_x[1] + rx <= w))
        # The same cells on a box rounded up to a multiple of 4 pixels (few
        # distinct boxes: one Gram matrix each) for the dense solver.
        hy0 = self.cell_y[1] - self.cell_y[0]
        hx0 = self.cell_x[1] - self.cell_x[0]
        self.hy = -(-hy0 // 4) * 4
        self.hx = -(-hx0 // 4) * 4
        self.by = self.cell_y[0] - (self.hy - hy0) // 2
        self.bx = self.cell_x[0] - (self.hx - hx0) // 2
        self.box_inner = ((self.by - ry >= 0) & (self.by + self.hy + ry <= h)
                          & (self.bx - rx >= 0) & (self.bx + self.hx + rx <= w))
        self.shape = (h, w)
        before_y, before_x = my + ry + 4, mx + rx + 4
        after_y = int(max(self.sy.max(initial=0), self.hy.max(initial=0) + 2 * ry)) + 4
        after_x = int(max(self.sx.max(initial=0), self.hx.max(initial=0) + 2 * rx)) + 4
        self.pad = (before_y, before_x, after_y, after_x)

    def padded(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, ..., H, W)`` -> zero-padded so that every patch index is valid."""
        py, px, qy, qx = self.pad
        return F.pad(t, (px, qx, py, qy))

    def index(self, sel: np.ndarray, sy: int, sx: int, device, origin=None):
        """Frame, row and column indices ``(N, 1, 1), (N, sy, 1), (N, 1, sx)`` into padded maps.

        ``origin``: ``(oy, ox)`` arrays of the boxes' first pixels (default:
        the FFT patches').
        """
        oy, ox = (self.oy, self.ox) if origin is None else origin
        py, px = self.pad[:2]
        f = torch.from_numpy(self.frame[sel]).to(device)[:, None, None]
        rows = torch.from_numpy(oy[sel] + py).to(device)[:, None] + torch.arange(sy, device=device)
        cols = torch.from_numpy(ox[sel] + px).to(device)[:, None] + torch.arange(sx, device=device)
        return f, rows[:, :, None], cols[:, None, :]

    def in_frame(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Which of the padded indices ``rows, cols`` lie inside the frame (bool, broadcast)."""
        py, px = self.pad[:2]
        h, w = self.shape
        return ((rows >= py) & (rows < py + h)) & ((cols >= px) & (cols < px + w))

    def masks(self, sel: np.ndarray, rows: torch.Tensor, cols: torch.Tensor, inner: bool):
        """Pixel mask (frame; None for inner patches) and cell mask of patches ``sel``."""
        py, px = self.pad[:2]
        h, w = self.shape
        dev = rows.device
        in_y = (rows >= py) & (rows < py + h)
        in_x = (cols >= px) & (cols < px + w)
        y0, y1 = (torch.from_numpy(v[sel] + py).to(dev)[:, None, None] for v in self.cell_y)
        x0, x1 = (torch.from_numpy(v[sel] + px).to(dev)[:, None, None] for v in self.cell_x)
        cells = (in_y & (rows >= y0) & (rows < y1)) & (in_x & (cols >= x0) & (cols < x1))
        pixels = None if inner else (in_y & in_x).float()
        return pixels, cells.float()[:, None]


class _Solver:
    """Sparse deconvolution of blocks of frames on data patches or overlapping tiles."""

    def __init__(self, psf, kernel, u, shape, device, tile_size):
        h, cy, cx = _fine_kernel(psf, kernel, u)
        g, ry, rx = _polyphase(h.astype(np.float64), cy, cx, u)
        self.u = u
        self.device = device
        self.g, self.ry, self.rx = g, ry, rx
        self.L = _lipschitz(h, u)
        self.tiling = _Tiling(shape, (ry, rx), tile_size)
        tl = self.tiling
        self.op = _TileOp(g, ry, rx, (tl.ty, tl.tx), device)
        # Least-squares amplitude of a lone scatterer: A^T y / ||A e||^2 (worst phase).
        self.col_norm2 = float((g**2).sum(axis=(1, 2)).min())
        ones = torch.ones((1, tl.h, tl.w), device=device)
        self.mask = tl.split(ones)[0].reshape(-1, tl.ty, tl.tx)  # (ny*nx, ty, tx)
        self.full_mask = (self.mask == 1).flatten(1).all(dim=1)
        # A^T y of whole frames (zero padding >= 2 r: no wrap-around).
        self.frame_op = _TileOp(g, ry, rx, (fast_len(tl.h + 2 * ry), fast_len(tl.w + 2 * rx)), device)
        self._patch_ops: dict[tuple[int, int], _TileOp] = {}
        self._dense_ops: dict[tuple[int, int], _DenseOp] = {}
        self._corr = None
        # How far from the data x may be non-zero on a patch (the maps end
        # within a pixel of it).
        self.x_reach = (min(ry, max(2, -(-ry // 4))), min(rx, max(2, -(-rx // 4))))

    def dense_op(self, hy: int, hx: int) -> _DenseOp:
        """The matrices of ``(hy, hx)``-pixel cell boxes (built once per box)."""
        key = (int(hy), int(hx))
        if key not in self._dense_ops:
            if self._corr is None:
                self._corr = _cross_correlations(self.g)
            self._dense_ops[key] = _DenseOp(self.g, self._corr, self.ry, self.rx, *key, self.device)
        return self._dense_ops[key]

    def patch_op(self, sy: int, sx: int) -> _TileOp:
        """The operator on ``(sy, sx)`` patches (built once per shape)."""
        key = (int(sy), int(sx))
        if key not in self._patch_ops:
            self._patch_ops[key] = _TileOp(self.g, self.ry, self.rx, key, self.device)
        return self._patch_ops[key]

    def thresholds(self, y: torch.Tensor, lam: float, nonneg: bool) -> torch.Tensor:
        """Per-frame soft threshold ``lam max(A^T y_f) / L`` ``(B,)`` (whole-frame ``A^T y``)."""
        b, h, w = y.shape
        py, px = self.frame_op.size
        per = max(1, (1 << 22) // (py * px * self.u * self.u))
        ref = torch.zeros(b, device=y.device)
        for s in range(0, b, per):
            aty = self.frame_op.adjoint(F.pad(y[s : s + per], (0, px - w, 0, py - h)))[..., :h, :w]
            ref[s : s + per] = (aty if nonneg else aty.abs()).amax(dim=(1, 2, 3))
        return lam * ref.clamp_min(0) / self.L

    def solve(self, y: torch.Tensor, lam, n_iter, nonneg, tol, skip_below, max_tiles=None):
        """Fine maps ``(B, uH, uW)`` of frames ``y`` ``(B, H, W)``.

        With ``nonneg`` each group of data pixels is solved on its own patch
        (:class:`_Regions`; exact up to the neglected tails), groups too large
        for a patch of twice the tile size on overlapping tiles; without it
        every frame is tiled.  Patches and tiles whose largest lone-scatterer
        amplitude ``A^T y / ||A e||^2`` is not above ``skip_below`` are not
        solved (their map is 0).
        """
        b, h, w = y.shape
        u = self.u
        thr = self.thresholds(y, lam, nonneg)
        if not nonneg:
            return self.solve_tiles(y, thr, n_iter, nonneg, tol, skip_below, max_tiles)
        reg = _Regions(y, (self.ry, self.rx), self.x_reach)
        tl = self.tiling
        big = (reg.sy > 2 * tl.ty) | (reg.sx > 2 * tl.tx)
        n_cells = u * u * reg.hy * reg.hx
        dense = ~big & (n_cells <= np.where(reg.box_inner, DENSE_CELLS, DENSE_CELLS_BORDER))
        phases = reg.padded(torch.zeros((b, u * u, h, w), device=y.device))
        ypad, lpad = reg.padded(y), reg.padded(reg.labels)
        ch = torch.arange(u * u, device=y.device)[None, :, None, None]
        self._solve_dense(reg, np.flatnonzero(dense), ypad, lpad, phases, thr, n_iter, nonneg, tol,
                          skip_below)
        small = np.flatnonzero(~big & ~dense)
        keys = np.stack([reg.sy[small], reg.sx[small], reg.inner[small]], axis=1)
        for key in np.unique(keys, axis=0) if small.size else []:
            sy, sx, inner = (int(v) for v in key)
            sel = small[(keys == key).all(axis=1)]
            op = self.patch_op(sy, sx)
            chunk = max_tiles or max(1, (1 << 18) // (sy * sx * u * u))
            for s in range(0, sel.size, chunk):
                ii = sel[s : s + chunk]
                f, rows, cols = reg.index(ii, sy, sx, y.device)
                own = lpad[f, rows, cols] == torch.from_numpy(reg.ids[ii]).to(y.device)[:, None, None]
                yp = ypad[f, rows, cols] * own  # this group's data only
                pm, cm = reg.masks(ii, rows, cols, bool(inner))
                aty = op.adjoint(yp) * cm
                act = aty.abs().amax(dim=(1, 2, 3)) / self.col_norm2 > skip_below
                if not bool(act.any()):
                    continue
                if not bool(act.all()):
                    keep = torch.nonzero(act).flatten()
                    yp, aty, f, rows, cols, cm = (a[keep] for a in (yp, aty, f, rows, cols, cm))
                    pm = None if pm is None else pm[keep]
                x = _fista_tiles(op, yp, pm, cm, thr[f[:, 0, 0]], self.L, n_iter, nonneg, tol, aty=aty)
                phases.index_put_((f[:, None], ch, rows[:, None], cols[:, None]), x, accumulate=True)
        py, px = reg.pad[:2]
        fine = F.pixel_shuffle(phases[:, :, py : py + h, px : px + w], u)[:, 0]
        if big.any():
            keep = torch.from_numpy(reg.ids[big].astype(np.int32)).to(y.device)
            y_big = y * torch.isin(reg.labels, keep)
            fine += self.solve_tiles(y_big, thr, n_iter, nonneg, tol, skip_below, max_tiles)
        return fine

    def _solve_dense(self, reg: _Regions, groups: np.ndarray, ypad, lpad, phases, thr, n_iter, nonneg,
                     tol, skip_below) -> None:
        """Solve small groups with :class:`_DenseOp` matrices; add their maps into ``phases``."""
        u, dev = self.u, phases.device
        ry, rx = self.ry, self.rx
        keys = np.stack([reg.hy[groups], reg.hx[groups], reg.box_inner[groups]], axis=1)
        ch = torch.arange(u * u, device=dev)[None, :, None, None]
        for key in np.unique(keys, axis=0) if groups.size else []:
            hy, hx, inner = (int(v) for v in key)
            sel = groups[(keys == key).all(axis=1)]
            op = self.dense_op(hy, hx)
            n, npix = op.G.shape[0], op.A.shape[0]
            # Inner boxes share one Gram matrix; border boxes get their own
            # (A^T diag(frame pixels) A), so fewer at a time.
            chunk = max(1, (1 << 20) // n) if inner else max(1, (1 << 23) // (n * npix))
            for s in range(0, sel.size, chunk):
                ii = sel[s : s + chunk]
                f, rows, cols = reg.index(ii, *op.pix, dev, origin=(reg.by - ry, reg.bx - rx))
                own = lpad[f, rows, cols] == torch.from_numpy(reg.ids[ii]).to(dev)[:, None, None]
                yp = (ypad[f, rows, cols] * own).flatten(1)  # this group's data only (0 off the frame)
                aty = yp @ op.A  # (N, n)
                crow, ccol = rows[:, ry : ry + hy], cols[:, :, rx : rx + hx]
                cm = None
                if not inner:
                    cm = reg.in_frame(crow, ccol)[:, None].expand(-1, u * u, -1, -1).reshape(len(ii), n)
                    cm = cm.float()
                    aty = aty * cm
                act = aty.abs().amax(dim=1) / self.col_norm2 > skip_below
                if not bool(act.any()):
                    continue
                if not bool(act.all()):
                    keep = torch.nonzero(act).flatten()
                    aty, f, crow, ccol, rows, cols = (a[keep] for a in (aty, f, crow, ccol, rows, cols))
                    cm = None if cm is None else cm[keep]
                if inner:
                    def gram(z, idx, G=op.G):
                        return z @ G
                else:
                    pix = reg.in_frame(rows, cols).flatten(1).float()  # (N, npix)
                    Gi = (op.A.T[None] * pix[:, None, :]) @ op.A  # (N, n, n)

                    def gram(z, idx, Gi=Gi):
                        return torch.bmm(z[:, None, :], Gi[idx])[:, 0]
                x = _fista(gram, aty, cm, thr[f[:, 0, 0]], self.L, n_iter, nonneg, tol)
                x = x.reshape(-1, u * u, hy, hx)
                phases.index_put_((f[:, None], ch, crow[:, None], ccol[:, None]), x, accumulate=True)

    def solve_tiles(self, y: torch.Tensor, thr: torch.Tensor, n_iter, nonneg, tol, skip_below,
                    max_tiles=None):
        """Fine maps of frames ``y`` on overlapping tiles, soft thresholds ``thr`` ``(B,)``.

        Tiles whose core (grown by 2 pixels) has no least-squares scatterer
        amplitude above ``skip_below`` are not solved (their map is 0); with
        ``skip_below=0`` only tiles that see no data at all are skipped, which
        is exact for ``nonneg``.
        """
        tl, op, u = self.tiling, self.op, self.u
        b = y.shape[0]
        nt = tl.ny * tl.nx
        tiles = tl.split(y).reshape(b * nt, tl.ty, tl.tx)
        mask = self.mask.repeat(b, 1, 1)
        seen = tiles.flatten(1).abs().amax(dim=1) > 0
        amp = torch.zeros(b * nt, device=y.device)
        sel = torch.nonzero(seen).flatten()
        # ~1 MB per tensor: FISTA's FFTs and element-wise passes then run in
        # cache (1.6x faster than 16 MB chunks on CPU).
        chunk = max_tiles or max(1, (1 << 18) // (tl.ty * tl.tx * u * u))
        g = 2  # pixels around the core that still count for activity
        for s in range(0, sel.numel(), chunk):
            ii = sel[s : s + chunk]
            aty = op.adjoint(tiles[ii]) * mask[ii, None]
            c = aty[..., tl.my - g : tl.my + tl.cy + g, tl.mx - g : tl.mx + tl.cx + g]
            amp[ii] = c.abs().amax(dim=(1, 2, 3)) / self.col_norm2
        thr = thr.repeat_interleave(nt)
        active = seen & (amp > skip_below)
        cores = torch.zeros((b * nt, u * u, tl.cy, tl.cx), device=y.device)
        inner = self.full_mask.repeat(b)
        for group, masked in ((active & inner, False), (active & ~inner, True)):
            sel = torch.nonzero(group).flatten()
            for s in range(0, sel.numel(), chunk):
                ii = sel[s : s + chunk]
                pm = mask[ii] if masked else None
                x = _fista_tiles(op, tiles[ii], pm, None if pm is None else pm[:, None], thr[ii], self.L,
                                 n_iter, nonneg, tol)
                cores[ii] = tl.core(x)
        fine = F.pixel_shuffle(cores, u)[:, 0]  # (b*nt, u cy, u cx)
        fine = fine.reshape(b, tl.ny, tl.nx, u * tl.cy, u * tl.cx)
        full = fine.permute(0, 1, 3, 2, 4).reshape(b, tl.ny * tl.cy * u, tl.nx * tl.cx * u)
        return full[:, : u * tl.h, : u * tl.w]


def _prepare(frames, psf, upsampling):
    arr = as_frames(frames)
    kernel, fwhm = psf_kernel(psf)
    check_kernel_fits(kernel, arr.shape[1:])
    u = int(upsampling)
    if u != upsampling or u < 1:
        raise CycleULMError(f"upsampling must be a positive integer, got {upsampling!r}.")
    return arr, kernel, fwhm, u


def deconvolve(
    frames,
    psf,
    *,
    upsampling: int = 2,
    lam: float = 0.05,
    n_iter: int = 100,
    tol: float = DEFAULT_TOL,
    nonneg: bool = True,
    skip_below: float = 0.0,
    tile_size: int = DEFAULT_TILE,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Sparse scatterer maps ``x`` on the fine grid (see :func:`localise_decon`).

    ``skip_below`` defaults to 0 here: only tiles that see no data at all are
    skipped, which leaves the maps unchanged for ``nonneg``.

    Returns
    -------
    numpy.ndarray
        float32 ``(T, u H, u W)``; cell ``k`` is at pixel coordinate
        :func:`fine_to_pixel` ``(k)``; values are bubble amplitudes in frame units
        (the PSF model is peak-normalised).
    """
    arr, kernel, _, u = _prepare(frames, psf, upsampling)
    _check_solver_args(lam, n_iter, tol, skip_below, tile_size)
    dev = resolve_device(device)
    solver = _Solver(psf, kernel, u, arr.shape[1:], dev, tile_size)
    out = np.empty((arr.shape[0], arr.shape[1] * u, arr.shape[2] * u), np.float32)
    bs = max(1, int(batch_size))
    with torch.inference_mode():
        for s in range(0, arr.shape[0], bs):
            y = torch.from_numpy(arr[s : s + bs]).to(dev)
            x = solver.solve(y, lam, int(n_iter), nonneg, float(tol), float(skip_below))
            out[s : s + bs] = x.cpu().numpy()
    return out


def _check_solver_args(lam, n_iter, tol, skip_below, tile_size) -> None:
    if not np.isfinite(lam) or lam < 0:
        raise CycleULMError(f"lam must be >= 0, got {lam!r}.")
    if int(n_iter) < 1:
        raise CycleULMError(f"n_iter must be >= 1, got {n_iter!r}.")
    if not np.isfinite(tol) or tol < 0:
        raise CycleULMError(f"tol must be >= 0, got {tol!r}.")
    if skip_below is not None and (not np.isfinite(skip_below) or skip_below < 0):
        raise CycleULMError(f"skip_below must be >= 0 (or None), got {skip_below!r}.")
    if int(tile_size) < 8:
        raise CycleULMError(f"tile_size must be >= 8 pixels, got {tile_size!r}.")


def localise_decon(
    frames,
    psf,
    *,
    upsampling: int = 2,
    lam: float = 0.05,
    n_iter: int = 100,
    tol: float = DEFAULT_TOL,
    threshold: float = 0.1,
    absolute_threshold: bool = False,
    min_distance: int | None = None,
    nonneg: bool = True,
    max_per_frame: int | None = None,
    skip_below: float | None = None,
    tile_size: int = DEFAULT_TILE,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> Localisations:
    """Localise bubbles by sparsity-based deconvolution (Yan et al. 2022).

    ``A`` blurs a map on a grid ``upsampling`` times finer than the pixels with
    the PSF and samples it at the pixel centres; FISTA (step ``1/L``, ``L`` an upper
    bound of the largest eigenvalue of ``A^T A`` from the kernel's sampled
    autocorrelation) minimises
    ``0.5 ||y - A x||^2 + lam_f ||x||_1`` with ``x >= 0``; each group of data
    pixels is solved on its own (dense Gram matrices, FFT patches or
    overlapping tiles by size, see the module notes); a frame-border mask
    keeps the whole-frame model (no scatterers outside the frame and no data
    term there).

    Detection: ``x`` is summed over a small box (3x3 cells for ``u <= 3``) so a
    bubble whose mass is split over neighbouring cells gives one peak; each
    peak's position is the centroid of ``x`` within ``+-u`` cells (``+-1``
    pixel), converted to pixels with :func:`fine_to_pixel`, and its
    ``intensity`` is the sum of ``x`` over that window, i.e. the bubble
    amplitude in frame units.

    Parameters
    ----------
    frames : array_like
        ``(T, H, W)`` stack or ``(H, W)`` image (real, background ~0, e.g. after
        clutter filtering).
    psf : PSF or array_like
        PSF model or a 2-D peak-normalised kernel (resampled to the fine grid
        with cubic splines).
    upsampling : int
        Fine-grid factor ``u`` (1 = pixel grid).
    lam : float
        Sparsity weight relative to ``max(A^T y)`` of each frame:
        ``lam_f = lam * max(A^T y_f)``; ``lam >= 1`` gives ``x = 0``.
    n_iter : int
        Maximum FISTA iterations.
    tol : float
        A tile stops once the relative change of its map over 5 iterations is
        below ``tol`` (0: always ``n_iter``).  The fine-grid map keeps shifting
        mass between neighbouring cells for hundreds of iterations, so the
        default ``1e-3`` rarely stops a tile before ``n_iter``; ``1e-2`` stops
        a clean isolated bubble after ~80 iterations with the same position
        (<0.02 px).
    threshold : float
        Detection threshold on the bubble amplitude.  By default relative to the
        largest amplitude found in this call (``score = intensity / max``);
        with ``absolute_threshold=True`` it is in frame intensity units, which is
        what a streaming pipeline on normalised blocks should use.
    absolute_threshold : bool
        See ``threshold``.
    min_distance : int, optional
        Peak suppression half-window in original pixels; default a quarter of
        the smaller PSF FWHM (rounded, at least 1).
    nonneg : bool
        Constrain ``x >= 0`` (otherwise plain L1 soft-thresholding).
    max_per_frame : int, optional
        Keep at most this many brightest bubbles per frame.
    skip_below : float, optional
        Groups of data pixels (and tiles) whose largest lone-scatterer
        amplitude ``A^T y / ||A e||^2`` (tiles: within 2 pixels of the core)
        is ``<= skip_below`` are not solved (their map is 0).  Default: ``threshold / 2`` with
        ``absolute_threshold`` (such a tile cannot yield a detection), else 0
        (only groups and tiles that see no data are skipped, which changes nothing).
    tile_size : int
        Tile size in pixels (at least 4 kernel reaches) for data too dense to
        split into groups (a group larger than two tiles); an axis shorter
        than 3 tiles is solved in one piece.
    batch_size : int
        Frames solved together (their active tiles are batched).
    device : str or torch.device, optional
        Torch device (default: CUDA when available).

    Returns
    -------
    Localisations
        ``frame, y, x`` (pixels), ``intensity`` (amplitude) and ``score``
        (amplitude relative to the call's maximum, or equal to ``intensity``
        with ``absolute_threshold``), sorted by frame then decreasing score.

    Raises
    ------
    CycleULMError
        On bad frames, a missing or invalid PSF, a kernel larger than the frames
        or invalid parameters.
    """
    arr, kernel, fwhm, u = _prepare(frames, psf, upsampling)
    _check_solver_args(lam, n_iter, tol, skip_below, tile_size)
    if not np.isfinite(threshold) or threshold < 0:
        raise CycleULMError(f"threshold must be >= 0, got {threshold!r}.")
    if min_distance is None:
        min_distance = max(1, int(round(0.25 * min(fwhm))))
    if int(min_distance) < 1:
        raise CycleULMError(f"min_distance must be >= 1, got {min_distance!r}.")
    if skip_below is None:
        # A tile whose best lone-scatterer amplitude is under half the absolute
        # threshold cannot yield a detection; with a relative threshold the
        # reference amplitude is unknown up front, so only empty tiles are skipped.
        skip_below = 0.5 * float(threshold) if absolute_threshold else 0.0
    dev = resolve_device(device)
    solver = _Solver(psf, kernel, u, arr.shape[1:], dev, tile_size)
    agg = max(1, u // 2)  # aggregation half-box in cells
    r = u  # centroid half-window in cells
    off = torch.arange(-r, r + 1, device=dev, dtype=torch.float32)
    parts = []
    bs = max(1, int(batch_size))
    with torch.inference_mode():
        for s in range(0, arr.shape[0], bs):
            y = torch.from_numpy(arr[s : s + bs]).to(dev)
            x = solver.solve(y, lam, int(n_iter), nonneg, float(tol), float(skip_below))
            x = x.clamp_min(0)
            xs = F.avg_pool2d(x[:, None], 2 * agg + 1, stride=1, padding=agg,
                              count_include_pad=True)[:, 0] * (2 * agg + 1) ** 2
            # Keep weak candidates; the threshold is applied to the final amplitudes.
            floor = 1e-6 * float(xs.max())
            f, py, px, _ = find_peaks(xs, floor, min_distance * u)
            if f.size == 0:
                continue
            # Centroid of x in a (2r+1)^2 window around each peak.
            xpad = F.pad(x, (r, r, r, r))
            ft = torch.from_numpy(f).to(dev)
            yy = torch.from_numpy(py).to(dev)[:, None] + r + off.long()[None]
            xx = torch.from_numpy(px).to(dev)[:, None] + r + off.long()[None]
            patch = xpad[ft[:, None, None], yy[:, :, None], xx[:, None, :]]
            tot = patch.sum(dim=(1, 2))
            dy = (patch.sum(dim=2) * off).sum(1) / tot.clamp_min(1e-30)
            dx = (patch.sum(dim=1) * off).sum(1) / tot.clamp_min(1e-30)
            fy = py + dy.cpu().numpy().astype(np.float64)
            fx = px + dx.cpu().numpy().astype(np.float64)
            parts.append(
                Localisations(
                    {
                        "frame": f + s,
                        "y": fine_to_pixel(fy, u),
                        "x": fine_to_pixel(fx, u),
                        "intensity": tot.cpu().numpy().astype(np.float64),
                    }
                )
            )
    empty = Localisations({"frame": [], "y": [], "x": [], "intensity": [], "score": []})
    if not parts:
        return empty
    locs = Localisations.concat(parts)
    amp = locs["intensity"]
    if absolute_threshold:
        score = amp.copy()
        keep = amp > threshold
    else:
        ref = amp.max() if amp.size else 1.0
        score = amp / ref if ref > 0 else np.zeros_like(amp)
        keep = score > threshold
    locs = locs.with_columns(score=score).select(keep)
    if max_per_frame is not None and len(locs):
        locs = locs.sort("frame")
        order = np.lexsort((-locs["score"], locs["frame"]))
        locs = locs.select(order)
        fr = locs["frame"]
        starts = np.r_[0, np.flatnonzero(np.diff(fr)) + 1]
        rank = np.arange(fr.size) - np.repeat(starts, np.diff(np.r_[starts, fr.size]))
        locs = locs.select(rank < int(max_per_frame))
    order = np.lexsort((-locs["score"], locs["frame"]))
    return locs.select(order)
