"""The fast deconvolution paths give the detections of a whole-frame FISTA.

``localise_decon`` solves each group of data pixels on its own (dense Gram
matrices for small groups, FFT patches for larger ones, overlapping tiles for
the largest).  These tests pin that against a straightforward reference: the
same FISTA on one periodic tile covering the whole (zero-padded) frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cycleulm.evaluate.metrics import match_localisations
from napari_cycleulm.localise import decon as decon_module
from napari_cycleulm.localise.decon import deconvolve, localise_decon
from napari_cycleulm.localise.peaks import find_peaks
from napari_cycleulm.psf import PSF

from .conftest import draw_bubbles

SIGMA = (1.5, 2.0)


def _sparse_bubbles(seed: int = 5, shape=(3, 72, 96), n: int = 30):
    """Thresholded bubbles (zero below 5 % of the peak), some on the frame borders."""
    rng = np.random.default_rng(seed)
    t, h, w = shape
    pts = np.column_stack(
        [rng.integers(0, t, n), rng.uniform(1.0, h - 2.0, n), rng.uniform(1.0, w - 2.0, n)]
    )
    pts[:3, 1:] = [[0.6, 30.3], [h - 1.4, 60.2], [40.3, w - 0.7]]
    pts[3:6, 0] = 0
    pts[3:6, 1:] = [[20.2, 20.4], [22.7, 25.1], [25.3, 21.8]]  # a touching cluster
    amps = rng.uniform(0.4, 1.0, n)
    frames = draw_bubbles(shape, pts, SIGMA, amps)
    frames[frames < 0.05] = 0.0
    return frames, pts


def _whole_frame_reference(monkeypatch, frames, **kw):
    """``localise_decon`` with FISTA on one periodic tile per frame (no groups, no skipping)."""

    def solve(self, y, lam, n_iter, nonneg, tol, skip_below, max_tiles=None):
        thr = self.thresholds(y, lam, nonneg)
        return self.solve_tiles(y, thr, n_iter, nonneg, tol, 0.0, max_tiles)

    with monkeypatch.context() as m:
        m.setattr(decon_module._Solver, "solve", solve)
        return localise_decon(frames, PSF(*SIGMA), tile_size=512, skip_below=0.0, **kw)


def _agreement(ref, new, tol_px: float = 0.1):
    """Fraction of ``ref`` detections with a one-to-one partner in ``new`` within ``tol_px``."""
    matched = match_localisations(ref, new, tolerance=tol_px).tp if len(ref) and len(new) else 0
    return matched / max(len(ref), 1)


@pytest.mark.parametrize("dense_cells", [decon_module.DENSE_CELLS, 0])
def test_grouped_solve_gives_the_whole_frame_detections(monkeypatch, dense_cells):
    # dense_cells=0 sends every group to the FFT patches instead of the Gram matrices.
    frames, _ = _sparse_bubbles()
    kw = dict(n_iter=100, threshold=0.1, absolute_threshold=True)
    ref = _whole_frame_reference(monkeypatch, frames, **kw)
    monkeypatch.setattr(decon_module, "DENSE_CELLS", dense_cells)
    monkeypatch.setattr(decon_module, "DENSE_CELLS_BORDER", dense_cells)
    new = localise_decon(frames, PSF(*SIGMA), **kw)
    assert len(ref) >= 25
    assert len(new) == len(ref)
    assert _agreement(ref, new) == 1.0
    assert np.allclose(np.sort(new["intensity"]), np.sort(ref["intensity"]), rtol=0.02, atol=0.01)


def test_grouped_maps_match_the_whole_frame_maps(monkeypatch):
    frames, _ = _sparse_bubbles(seed=8)
    psf = PSF(*SIGMA)
    new = deconvolve(frames, psf, n_iter=60)
    with monkeypatch.context() as m:
        m.setattr(decon_module._Solver, "solve",
                  lambda self, y, lam, n_iter, nonneg, tol, skip_below, max_tiles=None: self.solve_tiles(
                      y, self.thresholds(y, lam, nonneg), n_iter, nonneg, tol, 0.0, max_tiles))
        ref = deconvolve(frames, psf, n_iter=60, tile_size=512)
    assert np.abs(new - ref).max() < 0.02 * ref.max()
    assert np.abs(new - ref).sum() < 0.01 * np.abs(ref).sum()


def test_known_sparse_bubbles_are_found_within_a_tenth_of_a_pixel():
    pts = np.array([(0, 20.3, 30.6), (0, 50.8, 70.2), (1, 35.5, 47.4), (1, 8.2, 12.9), (2, 60.6, 20.1)])
    frames = draw_bubbles((3, 72, 96), pts, SIGMA, [0.9, 0.6, 1.0, 0.7, 0.8])
    frames[frames < 0.05] = 0.0
    locs = localise_decon(frames, PSF(*SIGMA), threshold=0.1, absolute_threshold=True)
    assert len(locs) == len(pts)
    found = locs.positions[np.lexsort((locs["x"], locs["y"], locs["frame"]))]
    want = pts[np.lexsort((pts[:, 2], pts[:, 1], pts[:, 0]))]
    assert np.all(found[:, 0] == want[:, 0])
    assert np.abs(found[:, 1:] - want[:, 1:]).max() < 0.1


def test_dense_gram_matrix_is_the_operator_of_the_fft_tiles():
    from napari_cycleulm.localise._common import psf_kernel

    psf = PSF(*SIGMA)
    kernel, _ = psf_kernel(psf)
    solver = decon_module._Solver(psf, kernel, 2, (64, 80), "cpu", 64)
    op = solver.dense_op(8, 12)
    a = op.A.double()
    assert torch.allclose(a.T @ a, op.G.double(), atol=1e-5)
    # A on the box equals the periodic FFT operator on a patch with room around it.
    ry, rx = solver.ry, solver.rx
    py, px = op.pix
    x = torch.rand(1, 4, 8, 12)
    big = torch.zeros(1, 4, py + 8, px + 8)
    big[:, :, ry : ry + 8, rx : rx + 12] = x
    fft = solver.patch_op(py + 8, px + 8).forward(big)[0, :py, :px]
    assert torch.allclose((x.flatten(1) @ op.A.T).reshape(py, px), fft, atol=1e-5)


def test_box_max_equals_max_pool_and_peaks_keep_the_first_of_a_plateau():
    """find_peaks (used by the deconvolution too) runs on separable box maxima."""
    import torch.nn.functional as F

    from napari_cycleulm.localise.peaks import box_max

    rng = np.random.default_rng(2)
    maps = rng.random((3, 40, 50)).astype(np.float32)
    maps[0, 10, 10:13] = 2.0  # a plateau: the first in raster order wins
    maps[1, 5:7, 5] = 3.0
    m = torch.from_numpy(maps)
    for d in (1, 2, 4):
        ref = F.max_pool2d(m[:, None], 2 * d + 1, stride=1, padding=d)[:, 0]
        assert torch.equal(box_max(m, d), ref)
        f, y, x, _ = find_peaks(m, 0.5, d)
        assert ((f == 0) & (y == 10) & (x == 10)).sum() == 1
        assert ((f == 0) & (y == 10) & ((x == 11) | (x == 12))).sum() == 0
        assert ((f == 1) & (y == 5) & (x == 5)).sum() == 1 and ((f == 1) & (y == 6) & (x == 5)).sum() == 0


def test_weak_groups_are_skipped_and_strong_ones_kept():
    frames, _ = _sparse_bubbles(seed=11)
    frames[:, :, :40] *= 0.02  # weak groups: below half the absolute threshold
    psf = PSF(*SIGMA)
    maps = deconvolve(frames, psf, n_iter=60, skip_below=0.1)
    # Cells further than the kernel reach from any strong bubble stay exactly 0.
    strong = frames.copy()
    strong[:, :, :40] = 0.0
    far = deconvolve(strong, psf, n_iter=60) == 0
    assert np.all(maps[far & (np.arange(maps.shape[2]) < 60)[None, None, :]] == 0)
    kw = dict(n_iter=60, threshold=0.1, absolute_threshold=True)
    ref = localise_decon(frames, psf, skip_below=0.0, **kw)
    fast = localise_decon(frames, psf, **kw)
    assert len(fast) == len(ref) > 5
    assert _agreement(ref, fast, 0.05) == 1.0
