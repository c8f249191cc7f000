"""Fine-tune MB-DT on the user's CEUS data, inside ROIs, with a live loss plot and preview."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image, Shapes

from ..._atomic import atomic_path
from ...dl.checkpoint import load_checkpoint
from ...errors import CycleULMError
from ...progress import Progress
from ...roi import count_patches, rois_to_mask
from ...preprocess import clutter_filtered, parse_clutter_filter
from ...train import FINETUNE_MAX_FRAMES, TrainResult, iter_train_mbdt
from ._base import StageWidget
from .pipeline_widget import clutter_controls
from ._layers import PSF_METADATA_KEY, add_or_replace, frames_from_layer, psf_from_layer, result_name
from ._model_picker import record_trained_model
from ._plot import PlotPanel

PATCH_SIZE = 40

#: Losses drawn in the plot (names from ``train.iter_train_mbdt``), with their legend labels.
PLOTTED_LOSSES = {"total": "G total", "d_total": "D total", "cycle_a": "cycle A", "similarity": "similarity"}

_INIT_CHOICES = [("default weights", "default"), ("from scratch", "scratch"), ("checkpoint file...", "file")]


@dataclass
class Stopped:
    """What a stopped run returns: the step reached and the checkpoint left at ``path``."""

    step: int
    path: Path


def _has_path(edit: FileEdit) -> bool:
    return edit.value is not None and str(edit.value) not in ("", ".")


def plot_losses(ax, history: dict[str, list]) -> None:
    """Draw the loss history (running means per logged step) on a matplotlib Axes, log scale."""
    steps = history.get("step", [])
    for key, label in PLOTTED_LOSSES.items():
        values = history.get(key, [])
        n = min(len(steps), len(values))
        ax.plot(steps[:n], values[:n], label=label, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log)")
    if any(v > 0 for key in PLOTTED_LOSSES for v in history.get(key, [])):
        ax.set_yscale("log")  # G total (~20) and the small terms (~0.1-1) on one plot
    ax.set_title("MB-DT losses")
    ax.legend(fontsize=7, loc="upper right")


class TrainWidget(StageWidget):
    """CEUS Image + ROI Shapes + PSF -> a fine-tuned MB-DT checkpoint.

    Patches of 40x40 pixels are drawn inside the ROI (the whole frame when no
    ROI layer is chosen or it holds no shape).  The loss plot and the
    ``<input> MB-DT preview`` layer follow training; Stop writes the current
    weights to the checkpoint (``save_on_stop``) and keeps it.  The trained
    model is recorded on the CEUS layer, so the Translate / E2E widgets offer
    it as ``trained on <layer>``.
    """

    run_text = "Train"
    #: Its only layer is the preview, always updated in place: no re-run choice.
    offers_rerun_mode = False

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_combo("CEUS", Image)
        self.roi = self.layer_combo("ROI (none = whole frame)", Shapes, allow_none=True)
        self.psf_layer = ComboBox(label="PSF (CEUS)", choices=self._psf_choices,
                                  tooltip="the '<input> PSF' layer made by the 'Estimate PSF' widget")
        self._combos.append(self.psf_layer)
        self.patches = Label(value="", label="patches (40x40)")
        self.steps = SpinBox(label="steps", value=2000, min=1, max=1_000_000, step=100)
        self.batch_size = SpinBox(label="batch size", value=8, min=1, max=256)
        self.clutter_filter, self.svd_block = clutter_controls()
        self.init = ComboBox(label="start from", choices=_INIT_CHOICES, value="default")
        self.init_file = FileEdit(label="init checkpoint", mode="r", filter="*.pt", visible=False)
        self.out = FileEdit(label="checkpoint", mode="w", filter="*.pt",
                            tooltip="where training writes its checkpoint; empty = a temporary file")
        self.active = Label(value="none", label="trained model")
        self.save_path = FileEdit(label="save as", mode="w", filter="*.pt")
        self.save_button = PushButton(text="Save")
        self.load_path = FileEdit(label="load", mode="r", filter="*.pt")
        self.load_button = PushButton(text="Load")
        self.extend([self.image, self.roi, self.psf_layer, self.clutter_filter, self.svd_block,
                     self.patches, self.steps, self.batch_size,
                     self.init, self.init_file, self.out])
        self.finish_layout()
        self.extend([
            self.active,
            Container(widgets=[self.save_path, self.save_button], layout="horizontal", labels=False,
                      label="save as"),
            Container(widgets=[self.load_path, self.load_button], layout="horizontal", labels=False,
                      label="load"),
        ])
        self.plot = PlotPanel(title="mbdt_losses")
        self.append(self.plot)

        self.history: dict[str, list] = {"step": []}
        self.active_path: Path | None = None
        self._stop_requested = False
        self._watched: Shapes | None = None
        self.n_patches: int | None = None
        self.init.changed.connect(lambda v: setattr(self.init_file, "visible", v == "file"))
        self.image.changed.connect(self._update_patches)
        self.roi.changed.connect(self._watch_roi)
        self.save_button.changed.connect(self.save)
        self.load_button.changed.connect(self.load)
        self._watch_roi()

    # -- inputs -------------------------------------------------------------------
    def _psf_choices(self, _widget=None):
        """CEUS PSF layers only: the MB-only PSF layer (``shrink`` metadata) would be shrunk twice."""
        return [(layer.name, layer) for layer in self.viewer.layers
                if PSF_METADATA_KEY in layer.metadata and "shrink" not in layer.metadata]

    def _watch_roi(self, _=None) -> None:
        """Recount patches whenever the chosen Shapes layer is edited."""
        if self._watched is not None:
            self._watched.events.data.disconnect(self._update_patches)
        self._watched = self.roi.value
        if self._watched is not None:
            self._watched.events.data.connect(self._update_patches)
        self._update_patches()

    def roi_mask(self) -> np.ndarray | None:
        """The ROI as an ``(H, W)`` mask in the CEUS layer's pixels (None: whole frame)."""
        image, shapes = self.image.value, self.roi.value
        if image is None:
            raise CycleULMError("no CEUS layer selected: open a CEUS stack first.")
        if shapes is None or len(shapes.data) == 0:
            return None
        # Shapes are in their own data coordinates; map them through world
        # coordinates to the image's pixels (the layers may differ in scale).
        s_scale, s_trans = np.asarray(shapes.scale[-2:]), np.asarray(shapes.translate[-2:])
        i_scale, i_trans = np.asarray(image.scale[-2:]), np.asarray(image.translate[-2:])
        verts = [((np.asarray(v, float)[:, -2:] * s_scale + s_trans) - i_trans) / i_scale for v in shapes.data]
        return rois_to_mask(verts, image.data.shape[-2:], shape_types=list(shapes.shape_type))

    def _update_patches(self, _=None) -> int | None:
        try:
            image = self.image.value
            if image is None:
                self.patches.value = "no CEUS layer"
                return None
            mask = self.roi_mask()
            h, w = image.data.shape[-2:]
            n = count_patches(np.ones((h, w), bool) if mask is None else mask, PATCH_SIZE)
        except CycleULMError as exc:
            self.patches.value = f"invalid ROI: {exc}"
            return None
        where = "whole frame" if mask is None else "inside the ROI"
        self.patches.value = f"{n} positions {where}" + ("  (too small: draw a larger ROI)" if n == 0 else "")
        self.n_patches = n
        return n

    def _out_path(self, name: str) -> Path:
        if _has_path(self.out):
            return Path(self.out.value)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "ceus"
        return Path(tempfile.gettempdir()) / "cycleulm" / f"{safe}_mbdt.pt"

    # -- running ------------------------------------------------------------------
    def work(self):
        layer = self.image.value
        # MB-DT learns from patches of a few thousand frames at most: a long stack is not read whole.
        frames = frames_from_layer(layer, frames=slice(0, FINETUNE_MAX_FRAMES))
        # MB-DT learns the frames the pipelines will give it: after the same clutter filter.
        frames = np.asarray(clutter_filtered(frames, parse_clutter_filter(self.clutter_filter.value,
                                                                          self.svd_block.value)))
        if self.psf_layer.value is None:
            raise CycleULMError(
                "no PSF: MB-DT training needs the CEUS PSF of this data; estimate it with the "
                "'Estimate PSF' widget first and choose its '<input> PSF' layer."
            )
        psf = psf_from_layer(self.psf_layer.value)
        mask = self.roi_mask()
        h, w = frames.shape[1:]
        n = count_patches(np.ones((h, w), bool) if mask is None else mask, PATCH_SIZE)
        if n == 0:
            where = f"the {h}x{w} frames are" if mask is None else "the ROI is"
            raise CycleULMError(
                f"{where} smaller than one {PATCH_SIZE}x{PATCH_SIZE} training patch: no patch to "
                f"train on; draw a larger ROI (at least {PATCH_SIZE}x{PATCH_SIZE} pixels)."
            )
        init = {"default": "default", "scratch": None}.get(self.init.value)
        if self.init.value == "file":
            if not _has_path(self.init_file):
                raise CycleULMError("choose the checkpoint to start from, or 'default weights'.")
            init = Path(self.init_file.value)
        steps, bs = self.steps.value, self.batch_size.value
        out = self._out_path(layer.name)
        gen = iter_train_mbdt(
            frames, psf, roi_mask=mask, init=init, steps=steps, batch_size=bs, out=out,
            log_every=max(1, min(10, steps // 100)),
            preview_every=max(1, min(100, steps // 10)),
            checkpoint_every=max(1, min(250, steps // 4)),
            save_on_stop=True,
        )
        self._stop_requested = False
        self._run_layer = layer  # previews and the record go to this layer even if the combo changes
        self.history = {"step": []}
        self._plot_losses()
        self._out = out

        def run():
            # Stop closes the trainer here, in the worker thread, so save_on_stop
            # writes the current weights before the run ends.
            step = 0
            while True:
                if self._stop_requested:
                    gen.close()
                    return Stopped(step, out)
                try:
                    p = next(gen)
                except StopIteration as fin:
                    return fin.value
                step = p.done
                yield p

        return run()

    def stop(self, _=None) -> None:
        if self.worker is not None:
            self.status.value = "stopping: saving the current weights..."
            self._stop_requested = True

    def _on_progress(self, p: Progress) -> None:
        super()._on_progress(p)
        info = p.info or {}
        if info.get("notes"):
            self.status.value = "; ".join(info["notes"])
        losses = info.get("losses") or {}
        if losses:
            self.history["step"].append(int(info.get("step", p.done)))
            for k, v in losses.items():
                self.history.setdefault(k, []).append(float(v))
            self._plot_losses()
        if info.get("preview") is not None:
            self._show_preview(np.asarray(info["preview"], np.float32), int(info.get("step", p.done)))

    def _plot_losses(self) -> None:
        """Redraw the loss plot from :attr:`history` (a snapshot, so a saved PNG shows this state)."""
        if not self.history.get("step"):
            self.plot.clear()
            return
        history = {k: list(v) for k, v in self.history.items()}
        self.plot.plot(lambda ax: plot_losses(ax, history))

    def _show_preview(self, img: np.ndarray, step: int) -> None:
        src = self._run_layer
        name = result_name(src.name, "MB-DT preview")
        geo = dict(scale=src.scale[-2:], translate=src.translate[-2:])
        hi = float(np.percentile(img, 99.9)) if img.size else 1.0
        units = {k: src.metadata[k] for k in ("pixel_size_um", "frame_rate_hz") if k in src.metadata}
        layer = add_or_replace(self.viewer, "image", img, name, colormap="magma",
                               metadata={"cycleulm": {"stage": "train mbdt preview", "step": step}, **units},
                               **geo)
        layer.contrast_limits = (0.0, max(hi, 1e-6))

    def done(self, result) -> None:
        if isinstance(result, Stopped):
            if not result.path.is_file():
                self.status.value = f"stopped at step {result.step}; no checkpoint was written"
                return
            path, text = result.path, f"stopped at step {result.step}; checkpoint kept"
        elif isinstance(result, TrainResult):
            path = result.checkpoint_path
            text = f"trained {result.steps_done} steps in {result.seconds:.0f} s"
        else:  # pragma: no cover - defensive
            return
        if path is not None:
            self._activate(Path(path), self._run_layer)
            text += f": {path}"
        self.status.value = text

    def _activate(self, path: Path, layer=None) -> None:
        self.active_path = path
        self.active.value = str(path)
        self.active.tooltip = str(path)
        layer = layer if layer is not None else self.image.value
        if layer is not None:
            record_trained_model(layer, "mbdt", path)

    # -- save / load ---------------------------------------------------------------
    def save(self, _=None) -> Path | None:
        """Copy the active checkpoint to the 'save as' path (atomically); it becomes the active model."""
        try:
            if self.active_path is None or not self.active_path.is_file():
                raise CycleULMError("no trained checkpoint to save yet: train (or load) a model first.")
            if not _has_path(self.save_path):
                raise CycleULMError("choose where to save the checkpoint ('save as').")
            dest = Path(self.save_path.value)
            if dest.suffix != ".pt":
                dest = dest.with_suffix(".pt")
            if dest.resolve() != self.active_path.resolve():
                with atomic_path(dest) as tmp:
                    shutil.copyfile(self.active_path, tmp)
        except (CycleULMError, OSError) as exc:
            self._fail(str(exc))
            return None
        self._activate(dest)
        self.status.value = f"saved to {dest}"
        return dest

    def load(self, _=None):
        """Load an MB-DT checkpoint file and make it the active model (offered to Translate / E2E)."""
        try:
            if not _has_path(self.load_path):
                raise CycleULMError("choose an MB-DT checkpoint file to load.")
            path = Path(self.load_path.value)
            ck = load_checkpoint(path, kind="mbdt", device="cpu")
        except CycleULMError as exc:
            self._fail(str(exc))
            return None
        self.last_error = None
        self._activate(path)
        self.status.value = f"loaded MB-DT (step {ck.step}) from {path.name}"
        return ck
