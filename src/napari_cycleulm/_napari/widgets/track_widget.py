"""Link localisations into tracks: Points -> napari Tracks layer."""

from __future__ import annotations

import napari
from magicgui.widgets import FloatSpinBox, SpinBox
from napari.layers import Points

from ...progress import Progress
from ...io.tables import Tracks
from ...track import Linker
from ._base import StageWidget
from ._display import show_tracks
from ._layers import localisations_from_points, origin_of, result_metadata, result_name


class TrackWidget(StageWidget):
    """Points (frame, y, x) -> ``[method] <origin> tracks`` (tracks of at least ``min length`` frames).

    ``<origin>`` and ``method`` come from the localisations layer (``[ncc] CEUS
    localisations`` gives ``[ncc] CEUS tracks``); a Points layer of the
    user's own gives ``<its name> tracks``.  The layer is hidden, like every
    localisations and tracks layer.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.points = self.layer_combo("localisations", Points)
        self.max_distance = FloatSpinBox(label="max distance (px/frame)", value=3.0, min=0.1, max=100.0, step=0.5)
        self.max_gap = SpinBox(label="max gap (frames)", value=1, min=0, max=10)
        self.min_length = SpinBox(label="min length (frames)", value=4, min=1, max=1000)
        self.extend([self.points, self.max_distance, self.max_gap, self.min_length])
        self.finish_layout()

    def work(self):
        locs = localisations_from_points(self.points.value).sort("frame")
        params = dict(max_distance=self.max_distance.value, max_gap=self.max_gap.value,
                      min_length=self.min_length.value)
        self._source, self._params = self.points.value, params

        def run():
            linker = Linker(**params)
            parts = []
            n = int(locs["frame"].max()) + 1 if len(locs) else 0
            for start in range(0, n, 100):
                parts.append(linker.add(locs.in_frames(start, start + 100), last_frame=min(start + 100, n) - 1))
                yield Progress(min(start + 100, n), n, "tracking")
            parts.append(linker.finish())
            return Tracks.concat(parts)

        return run()

    def done(self, tracks: Tracks) -> None:
        src = self._source
        if len(tracks) == 0:
            self.status.value = "no track reached the minimum length: raise 'max distance' or lower 'min length'"
            return
        origin, method = origin_of(src)
        meta = result_metadata("track", src, self._params)
        layer = show_tracks(self.viewer, tracks, result_name(origin, "tracks", method), reference=src,
                            mode=self.rerun_mode, metadata=meta, visible=False)
        self.status.value = f"{tracks.n_tracks} tracks in {layer.name!r}" + (
            "" if layer.visible else " (hidden: tick its eye to show it)")
