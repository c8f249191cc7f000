"""The path every user takes: widgets opened from napari's Plugins menu, the sample, File > Open.

Every contribution is enumerated from the installed manifest (never a
hard-coded list), so a widget added to ``napari.yaml`` that napari cannot
open fails here.  napari builds a widget itself and passes the viewer only to
a parameter named ``napari_viewer`` (or annotated with the exact type); it
passes a ``PublicOnlyProxy`` of the viewer, which refuses private attributes.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

pytest.importorskip("napari")

import npe2  # noqa: E402
from napari.layers import Image  # noqa: E402

from napari_cycleulm._tests._gui import run_widget  # noqa: E402
from napari_cycleulm._napari import sample_data as _sample_data  # noqa: E402
from napari_cycleulm._napari.widgets.workflow_widget import PLUGIN_NAME, TOOLS  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def small_sample(monkeypatch):
    """'Load sample' gives the sample's first 40 frames (same names and metadata), for speed."""
    full = _sample_data.make_sample

    def make_small():
        (frames, img_kw, _), (gt, gt_kw, _) = full()
        keep = gt[:, 0] < 40
        gt_kw = {**gt_kw, "features": {k: np.asarray(v)[keep] for k, v in gt_kw["features"].items()}}
        return [(frames[:40].copy(), img_kw, "image"), (gt[keep], gt_kw, "points")]

    monkeypatch.setattr(_sample_data, "make_sample", make_small)


def _manifest():
    pm = npe2.PluginManager.instance()
    pm.discover()
    return pm.get_manifest(PLUGIN_NAME)


def _widget_contributions():
    manifest = _manifest()
    commands = {c.id: c for c in manifest.contributions.commands}
    return [(w.display_name, commands[w.command]) for w in manifest.contributions.widgets]


WIDGETS = _widget_contributions()


def _class_of(command) -> type:
    module, name = command.python_name.split(":")
    return getattr(importlib.import_module(module), name)


def test_the_manifest_lists_every_widget_module():
    """Each widget module of the package is reachable from the menu (none shipped unopenable)."""
    listed = {command.python_name.split(":")[0] for _, command in WIDGETS}
    from pathlib import Path

    widgets_dir = Path(importlib.import_module("napari_cycleulm._napari.widgets").__file__).parent
    modules = {f"napari_cycleulm._napari.widgets.{p.stem}" for p in widgets_dir.glob("*_widget.py")}
    assert modules == listed
    assert set(TOOLS.values()) <= {name for name, _ in WIDGETS}


@pytest.mark.parametrize(("display_name", "command"), WIDGETS, ids=[n for n, _ in WIDGETS])
def test_every_widget_opens_through_add_plugin_dock_widget(make_napari_viewer, display_name, command):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, display_name)
    assert isinstance(widget, _class_of(command))
    if hasattr(widget, "viewer"):
        assert widget.viewer is viewer  # napari's proxy unwrapped: layers compare by identity
    assert dock.isVisible() or not viewer.window._qt_window.isVisible()
    # The injected viewer is live: a new stack shows up in the widget's layer choosers.
    viewer.add_image(np.zeros((4, 32, 32), np.float32), name="stack")
    combos = [c for c in getattr(widget, "_combos", []) if getattr(c, "choices", None)]
    for combo in combos:
        combo.reset_choices()
    if combos:
        assert any(any(isinstance(v, Image) and v.name == "stack" for v in c.choices) for c in combos)


@pytest.mark.parametrize(("display_name", "command"), WIDGETS, ids=[n for n, _ in WIDGETS])
def test_every_plugins_menu_item_opens_its_dock(make_napari_viewer, display_name, command):
    """Clicking the item in Plugins > CycleULM runs the menu's command, which docks the widget."""
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    app = get_app_model()
    items = {
        item.command.id: item.command.title
        for item in app.menus.get_menu(f"napari/plugins/{PLUGIN_NAME}")
        if hasattr(item, "command")
    }
    assert items.get(command.id) == display_name
    app.commands.execute_command(command.id).result()
    docked = [w for name, w in viewer.window.dock_widgets.items() if display_name in name]
    assert docked, f"{display_name!r} was not docked by its menu item"
    assert isinstance(docked[0], _class_of(command))


def test_sample_opens_from_file_open_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    samples = _manifest().contributions.sample_data
    assert samples
    layers = viewer.open_sample(PLUGIN_NAME, samples[0].key)
    kinds = {type(layer).__name__ for layer in layers}
    assert "Image" in kinds and layers[0].data.ndim == 3


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".mat"])
def test_file_open_reads_stacks_through_the_reader(make_napari_viewer, tmp_path, suffix):
    from napari_cycleulm.io import write_stack

    frames = np.random.default_rng(0).random((5, 24, 20)).astype(np.float32)
    path = tmp_path / f"stack{suffix}"
    if suffix == ".mat":
        scipy_io = pytest.importorskip("scipy.io")
        # MATLAB stacks are (z, x, t), as Verasonics / PALA save them.
        scipy_io.savemat(path, {"frames": frames.transpose(1, 2, 0)})
    else:
        write_stack(path, frames)
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN_NAME)
    assert len(layers) == 1 and layers[0].data.shape == (5, 24, 20)
    np.testing.assert_allclose(np.asarray(layers[0].data), frames, rtol=1e-6)


def test_workflow_from_the_menu_runs_a_pipeline_and_opens_tools_the_same_way(make_napari_viewer, qtbot,
                                                                            small_sample):
    """The main dock, opened from the menu, runs a pipeline; its tool buttons dock the menu's widgets."""
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "CycleULM workflow")
    image = dock.load_sample()
    assert dock.image.value is image and viewer.layers[image.name] is image
    dock.block_size.value = 20
    run_widget(qtbot, dock)
    assert any("baseline1" in layer.name and "density" in layer.name for layer in viewer.layers)
    for key, name in TOOLS.items():
        tool = getattr(dock, f"open_{key}_tool")()
        same = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, name)[1]
        assert tool is same  # one dock per tool, whichever way it was opened
        for attr in ("image", "reference", "raw"):
            combo = getattr(tool, attr, None)
            if combo is not None and hasattr(combo, "value") and isinstance(combo.value, Image):
                assert combo.value is image
