"""Regenerate the napari screenshots in docs/images (run under Xvfb).

Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out docs/images]

Opens the bundled sample in a real napari window, drives the widgets as a user
would (auto-pick bubbles, estimate the PSF, run Baseline 2) and saves a
screenshot of the whole window after each step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _wait(app, worker, timeout_s: float = 600.0) -> None:
    done = []
    worker.finished.connect(lambda: done.append(True))
    t0 = time.time()
    while not done and time.time() - t0 < timeout_s:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/images")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cycleulm._sample_data import make_sample
    from napari_cycleulm._widgets.pipeline_widget import PipelineWidget
    from napari_cycleulm._widgets.psf_widget import PSFWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    app = QApplication.instance()
    for data, kwargs, kind in make_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image = viewer.layers["CEUS sample"]
    viewer.dims.set_point(0, 50)

    psf_w = PSFWidget(viewer)
    viewer.window.add_dock_widget(psf_w, name="Estimate PSF")
    psf_w.image.value = image
    psf_w.auto_pick()
    worker = psf_w.start()
    _wait(app, worker)
    app.processEvents()
    viewer.screenshot(str(out / "psf_widget.png"), canvas_only=False)

    pipe_w = PipelineWidget(viewer)
    viewer.window.add_dock_widget(pipe_w, name="Run a ULM pipeline")
    pipe_w.image.value = image
    pipe_w.psf_layer.value = viewer.layers["CEUS sample PSF"]
    pipe_w.pipeline.value = "baseline2"
    worker = pipe_w.start()
    _wait(app, worker)
    viewer.layers["CEUS sample"].visible = False
    viewer.layers["CEUS sample PSF bubbles"].visible = False
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(out / "pipeline_widget.png"), canvas_only=False)
    print(f"screenshots written to {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
