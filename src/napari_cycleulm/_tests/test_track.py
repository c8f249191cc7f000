"""Specification of the tracker: ground-truth tracks in, the same tracks out."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.io.tables import Localisations, Tracks
from napari_cycleulm.track import Linker, max_distance_for, track


def _locs(rows, intensity=None):
    rows = np.asarray(rows, dtype=float).reshape(-1, 4)  # gt_id, frame, y, x
    cols = {"frame": rows[:, 1].astype(int), "y": rows[:, 2], "x": rows[:, 3]}
    if intensity is not None:
        cols["intensity"] = np.asarray(intensity, float)
    return Localisations(cols), rows[:, 0].astype(int)


def _five_bubbles(noise=0.05, seed=0):
    """5 bubbles (3 straight, 2 curved) whose paths cross at different times."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    specs = [  # gt id, start frame, n frames, start (y, x), velocity (vy, vx), curvature
        (0, 0, 40, (10.0, 5.0), (0.0, 1.5), 0.0),
        (1, 5, 40, (40.0, 30.0), (-0.8, 0.0), 0.0),  # crosses the path of 0 after 0 passed
        (2, 10, 30, (5.0, 60.0), (1.0, -1.0), 0.0),
        (3, 0, 40, (50.0, 50.0), (0.0, 0.0), 0.04),  # circle, radius 12, ~0.5 px/frame
        (4, 20, 30, (30.0, 10.0), (0.5, 2.0), 0.0),
    ]
    for gid, f0, n, (y0, x0), (vy, vx), curv in specs:
        for k in range(n):
            if curv:
                ang = curv * k
                y, x = y0 + 12 * np.sin(ang), x0 + 12 * (1 - np.cos(ang))
            else:
                y, x = y0 + vy * k, x0 + vx * k
            rows.append((gid, f0 + k, y + rng.normal(0, noise), x + rng.normal(0, noise)))
        truth[gid] = (vy, vx)
    rows.sort(key=lambda r: r[1])
    return rows, truth


def _match(tracks: Tracks, locs: Localisations, gt: np.ndarray):
    """For each GT id: (best output track, purity, completeness)."""
    def key(f, y, x):
        return int(f), round(float(y), 9), round(float(x), 9)

    gt_of = {key(*p): g for g, p in zip(gt, locs.positions)}
    out_gt = np.array([gt_of[key(*p)] for p in tracks.positions])
    res = {}
    for g in np.unique(gt):
        ids, counts = np.unique(tracks["track_id"][out_gt == g], return_counts=True)
        best = ids[np.argmax(counts)]
        in_best = out_gt[tracks["track_id"] == best]
        res[g] = (best, np.mean(in_best == g), counts.max() / np.sum(gt == g))
    return res


def test_crossing_straight_and_curved_tracks_are_recovered():
    rows, truth = _five_bubbles()
    locs, gt = _locs(rows)
    tracks = track(locs, max_distance=3.0)
    res = _match(tracks, locs, gt)
    assert len({r[0] for r in res.values()}) == 5  # one output track per GT track
    for g, (best, purity, completeness) in res.items():
        assert purity > 0.9 and completeness > 0.9, (g, purity, completeness)
    # velocities on the straight tracks
    for g, (vy, vx) in truth.items():
        if g == 3:
            continue
        sel = tracks["track_id"] == res[g][0]
        assert np.abs(tracks["vy"][sel] - vy).max() < 0.1
        assert np.abs(tracks["vx"][sel] - vx).max() < 0.1


def test_track_ids_are_consecutive_in_order_of_first_appearance():
    rows, _ = _five_bubbles()
    locs, _ = _locs(rows)
    tracks = track(locs)
    ids = tracks["track_id"]
    assert sorted(np.unique(ids)) == list(range(tracks.n_tracks))
    first = [tracks["frame"][ids == i].min() for i in range(tracks.n_tracks)]
    assert first == sorted(first)
    assert tracks.names[:6] == ["track_id", "frame", "y", "x", "vy", "vx"]


def _line(n=10, skip=(), vx=1.0):
    rows = [(0, f, 20.0, 5.0 + vx * f) for f in range(n) if f not in skip]
    return _locs(rows)[0]


def test_missed_detection_is_bridged_only_with_gap_closing():
    locs = _line(10, skip=(5,))
    bridged = track(locs, max_gap=1)
    assert bridged.n_tracks == 1 and len(bridged) == 9
    assert 5 not in bridged["frame"]  # gap frame is not filled...
    split = track(locs, max_gap=0)
    assert split.n_tracks == 2 and sorted(split.lengths().values()) == [4, 5]
    filled = track(locs, max_gap=1, interpolate_gaps=True)
    row = filled["frame"] == 5  # ...unless asked to
    assert filled["interpolated"][row][0] == 1 and filled["x"][row][0] == pytest.approx(10.0)
    assert filled["interpolated"].sum() == 1


def test_short_tracks_are_dropped():
    locs = Localisations.concat([_line(3), _line(6).with_columns(y=np.full(6, 40.0))])
    tracks = track(locs, min_length=4)
    assert tracks.n_tracks == 1 and len(tracks) == 6
    assert np.all(tracks["y"] == 40.0)
    assert track(locs, min_length=3).n_tracks == 2


def test_blocks_give_the_same_tracks_as_one_call():
    rng = np.random.default_rng(3)
    n, t = 40, 120
    pos = rng.uniform(0, 60, (n, 2))
    vel = rng.normal(0, 1, (n, 2))
    parts = []
    for f in range(t):
        pos += vel + rng.normal(0, 0.1, pos.shape)
        keep = rng.random(n) > 0.1  # missed detections and empty frames
        if f in (50, 51):
            keep[:] = False
        k = int(keep.sum())
        parts.append(np.column_stack([np.full(k, f), pos[keep], rng.uniform(1, 3, k)]))
    a = np.concatenate(parts)
    locs = Localisations({"frame": a[:, 0], "y": a[:, 1], "x": a[:, 2], "intensity": a[:, 3]})
    one = track(locs)
    assert one.n_tracks > 20
    linker = Linker()
    out = []
    for lo, hi in [(0, 7), (7, 8), (8, 50), (50, 52), (52, 53), (53, 90), (90, 120)]:
        out.append(linker.add(locs.in_frames(lo, hi)))
    out.append(linker.finish())
    assert len(out[2]) > 0  # finished tracks come out while streaming
    blocks = Tracks.concat(out).sort("track_id", "frame")
    assert blocks.names == one.names
    for name in one.names:
        np.testing.assert_array_equal(blocks[name], one[name])


def test_intensity_term_prevents_a_wrong_link():
    # Two bubbles move right side by side 1 px apart; bright A on y=10, dim B on y=11.
    rows, inten = [], []
    for f in range(8):
        ya, yb = 10.0, 11.0
        if f == 4:  # localisation noise makes the position-only match swap them
            ya, yb = 10.6, 10.4
        rows += [(0, f, ya, 2.0 + f), (1, f, yb, 2.0 + f)]
        inten += [10.0, 1.0]
    locs, gt = _locs(rows, inten)
    def pure(tracks):  # every track holds only bright or only dim points
        ids, inten = tracks["track_id"], tracks["intensity"]
        return all(np.ptp(inten[ids == i]) == 0 for i in range(tracks.n_tracks))

    with_intensity = track(locs, intensity_weight=0.5)
    assert with_intensity.n_tracks == 2 and len(with_intensity) == 16
    assert pure(with_intensity)
    assert not pure(track(locs, intensity_weight=0.0))  # position alone swaps them


def test_empty_input_gives_empty_tracks():
    empty = track(Localisations())
    assert isinstance(empty, Tracks) and len(empty) == 0
    assert {"track_id", "frame", "y", "x", "vy", "vx"} <= set(empty.names)
    linker = Linker()
    assert len(linker.add(Localisations())) == 0
    assert len(linker.finish()) == 0


def test_bad_input_raises():
    with pytest.raises(CycleULMError, match="lack column"):
        track({"frame": [0, 1], "y": [1.0, 2.0]})
    with pytest.raises(CycleULMError):
        track(np.zeros((3, 3)))
    linker = Linker()
    linker.add(_line(10).in_frames(0, 5))
    with pytest.raises(CycleULMError, match="increase"):
        linker.add(_line(10).in_frames(3, 8))
    with pytest.raises(CycleULMError, match="max_distance"):
        Linker(max_distance=0)
    with pytest.raises(CycleULMError, match="max_gap"):
        Linker(max_gap=-1)
    with pytest.raises(CycleULMError, match="NaN"):
        track(Localisations({"frame": [0], "y": [np.nan], "x": [1.0]}))
    linker.finish()
    with pytest.raises(CycleULMError, match="finished"):
        linker.add(_line(3))


def test_max_distance_helper():
    assert max_distance_for(25.0, 500.0, 50.0) == pytest.approx(1.0)
    assert max_distance_for(50.0, 1000.0, 25.0) == pytest.approx(2.0)
    with pytest.raises(CycleULMError):
        max_distance_for(-1.0, 500.0, 50.0)


def test_speed_gate_stops_links_beyond_max_distance():
    locs = _line(8, vx=2.5)
    assert track(locs, max_distance=3.0).n_tracks == 1
    assert track(locs, max_distance=2.0).n_tracks == 0


def test_motion_prediction_beats_nearest_neighbour():
    # Fast bubble A (2 px/frame) passes a still bubble B that appears 1 px ahead of it.
    rows = [(0, f, 10.0, 2.0 * f) for f in range(12)]
    rows += [(1, f, 10.3, 2.0 * 6 + 1.0) for f in range(7, 14)]  # 1 px ahead of A at frame 6
    rows.sort(key=lambda r: r[1])
    locs, gt = _locs(rows)
    tracks = track(locs, max_distance=3.0, intensity_weight=0.0)
    res = _match(tracks, locs, gt)
    assert tracks.n_tracks == 2
    assert all(p == 1.0 and c == 1.0 for _, p, c in res.values())
    a = tracks["track_id"] == res[0][0]
    np.testing.assert_allclose(tracks["vx"][a], 2.0, atol=1e-9)
