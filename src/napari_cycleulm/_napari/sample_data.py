"""napari sample data: a simulated CEUS sequence with its ground truth.

Returns plain layer-data tuples, so this module imports nothing from napari.
"""

from __future__ import annotations

from ..simulate import PRESETS, simulate


def make_sample() -> list[tuple]:
    """Simulate the ``"sample"`` preset (seed 0) as napari layer-data tuples.

    Returns
    -------
    list of tuple
        ``(frames, kwargs, "image")`` with the ``(T, H, W)`` envelope stack and
        ``(positions, kwargs, "points")`` with the hidden ``(N, 3)``
        ``(frame, y, x)`` ground-truth positions (features ``track_id``,
        ``amplitude``).
    """
    sim = simulate(seed=0, **PRESETS["sample"])
    gt = sim.ground_truth
    meta = dict(sim.metadata)
    image = (sim.frames, {"name": "CEUS sample", "metadata": meta, "colormap": "gray"}, "image")
    points = (
        gt.positions,
        {
            "name": "CEUS sample ground truth",
            "visible": False,
            "size": 2,
            "face_color": "lime",
            "features": {"track_id": gt["track_id"], "amplitude": gt["amplitude"]},
            "metadata": meta,
        },
        "points",
    )
    return [image, points]
