"""PSF FWHM estimated from ground-truth bubble positions (and automatically) versus the simulator's truth.

For several simulated settings, the PSF is estimated (a) from isolated
ground-truth bubble positions, as if a user had clicked them exactly, and (b)
fully automatically; the FWHM is compared with the simulator's true FWHM
(measured on its noiseless envelope PSF at mid depth).

Usage::

    python benchmarks/psf_accuracy.py
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from napari_cycleulm.psf import estimate_psf, estimate_psf_auto
from napari_cycleulm.simulate import isolated_positions, simulate

SETTINGS = [
    dict(seed=0),  # the bundled sample
    dict(seed=11, clutter_db=-6.0),
    dict(seed=12, clutter_db=-20.0, density=40.0),
    dict(seed=13, psf_fwhm_um=(300.0, 450.0)),
    dict(seed=14, clutter_db=-np.inf, noise_db=-np.inf),
]


def main(argv=None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    print(f"{'setting':>45} | {'true FWHM y, x (px)':>19} | {'from GT positions':>26} | {'automatic':>26}")
    for kw in SETTINGS:
        sim = simulate(**kw)
        ty, tx = sim.metadata["psf_fwhm_y_px"], sim.metadata["psf_fwhm_x_px"]
        pts = sim.ground_truth.positions[isolated_positions(sim.ground_truth.positions, sim.frames.shape[1:], n=40)]
        gt = estimate_psf(sim.frames, pts).psf
        auto = estimate_psf_auto(sim.frames).psf

        def fmt(p):
            return (f"{p.fwhm_y_px:4.2f}, {p.fwhm_x_px:4.2f} ({100 * (p.fwhm_y_px / ty - 1):+4.1f}%, "
                    f"{100 * (p.fwhm_x_px / tx - 1):+4.1f}%)")

        print(f"{str(kw):>45} | {ty:8.2f}, {tx:8.2f} | {fmt(gt):>26} | {fmt(auto):>26}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
