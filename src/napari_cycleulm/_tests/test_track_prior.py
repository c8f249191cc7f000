"""Specification of the motion-prior track decoder, the track-level scores and MBT-Net's loss default."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.track.motion_prior import VelocityPrior, link_with_prior, velocity_field_from_tracks
from napari_cycleulm.io.tables import Localisations, Tracks
from napari_cycleulm.track import Linker, track
from napari_cycleulm.evaluate.track_metrics import length_summary, score_tracks

SHAPE = (32, 64)  # frames (H, W), pixels


def _train_of_bubbles(n_bubbles=10, n_frames=15, spacing=4.0, vx=2.5, noise=0.03, seed=0):
    """Bubbles in a row along y = 16, ``spacing`` px apart, all moving ``vx`` px/frame.

    The next bubble behind is closer to a bubble's new position than its own
    old one (``spacing - vx < vx``), so nearest-neighbour linking of new tracks
    shifts every bubble onto its follower; a prior knows better.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_frames):
        for k in range(n_bubbles):
            rows.append((k, f, 16.0 + rng.normal(0, noise), 2.0 + spacing * k + vx * f + rng.normal(0, noise)))
    rows = np.array(rows)
    gt = Localisations(dict(frame=rows[:, 1].astype(int), y=rows[:, 2], x=rows[:, 3],
                            track_id=rows[:, 0].astype(int), vy=np.zeros(len(rows)),
                            vx=np.full(len(rows), vx)))
    det = Localisations({k: gt[k] for k in ("frame", "y", "x")})
    return gt, det


def _uniform_field(vy, vx, u=4, shape=SHAPE):
    return np.full((shape[0] * u, shape[1] * u), vy), np.full((shape[0] * u, shape[1] * u), vx)


# --- the decoder -------------------------------------------------------------------------------
def test_prior_recovers_the_tracks_that_nearest_neighbour_linking_swaps():
    gt, det = _train_of_bubbles()
    vy, vx = _uniform_field(0.0, 2.5)
    params = dict(max_distance=3.5, min_length=2, intensity_weight=0)
    kalman = score_tracks(gt, track(det, **params))
    prior = score_tracks(gt, link_with_prior(det, vy, vx, scale=4, **params))
    assert prior.true_link_fraction == 1.0 and prior.false_link_fraction == 0.0
    assert prior.n_links == prior.n_true_links
    assert kalman.false_link_fraction > 0.3  # the constant-velocity linker needs a start it cannot get here


def test_prior_tracks_keep_the_true_ids_and_velocities():
    gt, det = _train_of_bubbles(n_bubbles=4)
    vy, vx = _uniform_field(0.0, 2.5)
    tr = link_with_prior(det, vy, vx, scale=4, max_distance=3.5, min_length=2, intensity_weight=0)
    assert tr.n_tracks == 4
    assert set(tr.lengths().values()) == {15}
    np.testing.assert_allclose(tr["vx"], 2.5, atol=0.05)


def test_unknown_prior_links_exactly_like_the_kalman_linker():
    gt, det = _train_of_bubbles(n_bubbles=6, seed=3)
    nan_field = np.full((SHAPE[0] * 4, SHAPE[1] * 4), np.nan)
    plain = track(det, max_distance=3.5, min_length=2)
    with_nan = link_with_prior(det, nan_field, nan_field, scale=4, max_distance=3.5, min_length=2)
    assert plain.to_csv_string() == with_nan.to_csv_string()
    assert plain.to_csv_string() == track(det, max_distance=3.5, min_length=2, motion_prior=None).to_csv_string()


def test_prior_blends_with_the_tracks_own_velocity():
    """A wrong prior is followed by new tracks, then outweighed by an established track's velocity."""
    rows = [(f, 10.0, 5.0 + 2.0 * f) for f in range(12)]  # one bubble at 2 px/frame
    det = Localisations(dict(frame=[r[0] for r in rows], y=[r[1] for r in rows], x=[r[2] for r in rows]))
    vy, vx = _uniform_field(0.0, 1.0)  # prior says 1 px/frame: off by 1
    loose = link_with_prior(det, vy, vx, max_distance=3.0, min_length=2, prior_noise=2.0)
    assert loose.n_tracks == 1 and len(loose) == 12
    # Trusting the prior fully (tiny prior_noise) breaks the track once the gate is missed.
    strict = link_with_prior(det, vy, vx, max_distance=0.9, min_length=1, prior_noise=1e-3)
    assert strict.n_tracks > 1


def test_blocks_give_the_same_tracks_as_one_call_with_a_prior():
    gt, det = _train_of_bubbles(n_bubbles=8, n_frames=20, seed=5)
    prior = VelocityPrior(*_uniform_field(0.0, 2.5), scale=4)
    params = dict(max_distance=3.5, min_length=2, motion_prior=prior)
    whole = track(det, **params)
    linker = Linker(**params)
    parts = [linker.add(det.in_frames(a, a + 7)) for a in range(0, 20, 7)] + [linker.finish()]
    blocks = Tracks.concat(parts).sort("track_id", "frame")
    assert whole.to_csv_string() == blocks.to_csv_string()


def test_bad_priors_are_refused():
    _, det = _train_of_bubbles(n_bubbles=3)
    with pytest.raises(CycleULMError, match="motion_prior must be a callable"):
        Linker(motion_prior=np.zeros((4, 4)))
    with pytest.raises(CycleULMError, match="prior_noise"):
        Linker(prior_noise=0)
    with pytest.raises(CycleULMError, match="returned 1 and 1 values"):
        track(det, motion_prior=lambda f, y, x: (np.zeros(1), np.zeros(1)))
    with pytest.raises(CycleULMError, match="do not pass motion_prior"):
        link_with_prior(det, *_uniform_field(0, 1), motion_prior=None)


# --- velocity maps as priors ---------------------------------------------------------------------
def test_velocity_prior_samples_the_sr_grid_bilinearly():
    u = 4
    yy, xx = np.mgrid[0 : 8 * u, 0 : 8 * u].astype(float)
    # Map value = original x coordinate of the SR pixel centre: linear, so bilinear is exact.
    vx = (xx - (u - 1) / 2) / u
    prior = VelocityPrior(np.zeros_like(vx), vx, scale=u)
    x = np.array([1.0, 2.3, 5.7])
    vy_s, vx_s = prior(np.zeros(3, int), np.array([3.0, 3.2, 4.9]), x)
    np.testing.assert_allclose(vx_s, x)
    np.testing.assert_allclose(vy_s, 0)
    # Outside the map: unknown.
    out = prior(np.zeros(2, int), np.array([-5.0, 3.0]), np.array([3.0, 100.0]))
    assert np.isnan(out[0]).all() and np.isnan(out[1]).all()


def test_velocity_prior_ignores_unknown_pixels_and_can_fill_them():
    vy = np.full((16, 16), np.nan)
    vx = np.full((16, 16), np.nan)
    vy[8, 8], vx[8, 8] = 1.0, -2.0
    prior = VelocityPrior(vy, vx, scale=1)
    # Between a known and unknown pixel: the known one's value, not a blend with NaN.
    assert prior([0], [8.4], [8.0])[0][0] == pytest.approx(1.0)
    assert np.isnan(prior([0], [12.0], [8.0])[0][0])
    filled = VelocityPrior(vy, vx, scale=1, fill_sigma=2.0)
    assert filled([0], [10.0], [8.0])[1][0] == pytest.approx(-2.0)
    assert np.isnan(filled([0], [15.0], [15.0])[0][0])  # beyond ~3 sigma


def test_stack_of_window_maps_is_chosen_by_frame():
    maps = np.stack([np.full((8, 8), k, float) for k in range(3)])
    prior = VelocityPrior(maps, -maps, scale=1, frames_per_map=8)
    vy, vx = prior(np.array([0, 7, 8, 23, 100]), np.full(5, 4.0), np.full(5, 4.0))
    np.testing.assert_array_equal(vy, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(vx, [0, 0, -1, -2, -2])
    with pytest.raises(CycleULMError, match="frames_per_map"):
        VelocityPrior(maps, maps, scale=1)
    with pytest.raises(CycleULMError, match="same shape"):
        VelocityPrior(maps, maps[0], scale=1)


def test_velocity_field_from_ground_truth_tracks():
    gt, _ = _train_of_bubbles(n_bubbles=3)
    vy, vx = velocity_field_from_tracks(gt, SHAPE, 4)
    assert vy.shape == (SHAPE[0] * 4, SHAPE[1] * 4)
    known = np.isfinite(vx)
    assert known.sum() > 0 and np.allclose(vx[known], 2.5) and np.allclose(vy[known], 0)
    # Known pixels lie on the bubbles' row (y = 16 -> SR row 16 * 4 + 1.5 -> 65 or 66).
    assert set(np.nonzero(known)[0]) <= {65, 66}


# --- track-level scores ---------------------------------------------------------------------------
def _gt_two_tracks():
    f = np.arange(5)
    return Localisations(dict(frame=np.r_[f, f], y=np.r_[np.full(5, 5.0), np.full(5, 20.0)],
                              x=np.r_[f * 1.0, f * 1.0], track_id=np.r_[np.zeros(5), np.ones(5)].astype(int)))


def test_scores_of_perfect_tracks():
    gt = _gt_two_tracks()
    s = score_tracks(gt, Tracks({k: gt[k] for k in ("track_id", "frame", "y", "x")}))
    assert (s.n_true_links, s.n_recovered, s.n_links, s.n_correct) == (8, 8, 8, 8)
    assert s.true_link_fraction == 1.0 and s.false_link_fraction == 0.0
    d = s.to_dict()
    assert d["track_length"]["mean"] == 5.0 and d["true_track_length"]["histogram"]["4-7"] == 2


def test_scores_count_switches_unmatched_ends_and_missed_links():
    gt = _gt_two_tracks()
    # Track 0 jumps to the other bubble at frame 3; track 1 is broken in two; a
    # false detection (far from any bubble) is linked at the end of track 2.
    tracks = Tracks(dict(
        track_id=[0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2],
        frame=[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5],
        y=[5, 5, 5, 20, 20, 20, 20, 20, 5, 5, 40.0],
        x=[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 9.0],
    ))
    s = score_tracks(gt, tracks)
    assert s.n_links == 8
    assert s.n_switch == 2  # 0: frame 2 -> 3, 2: frame 2 -> 3
    assert s.n_unmatched == 1  # 2: frame 4 -> the false detection
    assert s.n_correct == 5
    assert s.false_link_fraction == pytest.approx(3 / 8)
    # True links recovered: bubble 0 (frames 0-1, 1-2, 3-4), bubble 1 (0-1, 3-4).
    assert s.n_recovered == 5 and s.true_link_fraction == pytest.approx(5 / 8)
    assert s.n_true_links_detected == 8


def test_scores_skip_interpolated_rows_and_count_undetected_links():
    gt = _gt_two_tracks()
    keep = ~((gt["track_id"] == 0) & (gt["frame"] == 2))  # bubble 0 missed in frame 2
    tr = track(gt.select(keep), max_distance=2.0, min_length=2, intensity_weight=0, interpolate_gaps=True)
    s = score_tracks(gt, tr)
    assert s.n_true_links_detected == 6 and s.n_recovered == 6
    assert s.true_link_fraction_detected == 1.0 and s.false_link_fraction == 0.0


def test_length_summary_of_no_tracks():
    d = length_summary([])
    assert d["n_tracks"] == 0 and np.isnan(d["mean"]) and d["histogram"]["128+"] == 0


# --- MBT-Net training default --------------------------------------------------------------------
def _shipped_mbtnet_loss_params() -> dict:
    from napari_cycleulm.dl.checkpoint import load_checkpoint

    ck = load_checkpoint(str(files("napari_cycleulm") / "weights" / "mbtnet_default.pt"))
    return ck.extra["training"]["loss_params"]


def test_mbtnet_trainer_default_loss_is_the_shipped_weights():
    from napari_cycleulm import train

    assert train.MBTNET_LOSS_PARAMS == _shipped_mbtnet_loss_params()
    assert train.MBTNET_LOSS_PARAMS["dice_weight"] > 0  # thin trajectories (docs/model_card.md)


def test_cycleulm_train_mbtnet_with_defaults_uses_the_shipped_loss(tmp_path, monkeypatch):
    """`cycleulm train mbtnet` with no loss option trains with (and records) the shipped loss."""
    import napari_cycleulm.dl.losses as losses
    from napari_cycleulm.dl.checkpoint import load_checkpoint
    from napari_cycleulm.cli import main

    seen = []
    real = losses.mbtnet_loss

    def spy(*args, **kw):
        seen.append({k: kw.get(k) for k in ("pos_weight", "dice_weight", "velocity_weight")})
        return real(*args, **kw)

    monkeypatch.setattr(losses, "mbtnet_loss", spy)
    out = tmp_path / "m.pt"
    assert main(["train", "mbtnet", "--sigma-range", "1", "1", "--steps", "1", "--out", str(out),
                 "--quiet"]) == 0
    assert seen == [_shipped_mbtnet_loss_params()]
    ck = load_checkpoint(str(out))
    assert ck.extra["training"]["loss_params"] == _shipped_mbtnet_loss_params()
