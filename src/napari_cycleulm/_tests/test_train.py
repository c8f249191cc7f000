"""Training loops of MB-DT, MBL-Net and MBT-Net (a few steps each, CPU)."""

import numpy as np
import pytest
import torch

from napari_cycleulm import train
from napari_cycleulm.dl.checkpoint import load_checkpoint
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.progress import Cancelled, drive
from napari_cycleulm.psf import PSF
from napari_cycleulm.simulate.mb_only import SyntheticConfig

from .conftest import draw_bubbles

CEUS_PSF = PSF(1.5, 2.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny batches gain nothing from more, and on a shared
    machine a second OpenMP thread waiting for a busy core slows every step."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

MB_PSF = CEUS_PSF.mbonly()


@pytest.fixture(scope="module")
def stack():
    """(6, 48, 48) frames: drifting bubbles on a weak clutter background."""
    rng = np.random.default_rng(0)
    pts = [(f, y + 0.5 * f, x) for f in range(6) for y, x in rng.uniform(5, 43, (6, 2))]
    frames = draw_bubbles((6, 48, 48), pts, (1.5, 2.0), rng.uniform(0.5, 1.0, len(pts)))
    frames += np.abs(rng.normal(0, 0.05, frames.shape)).astype(np.float32)
    return frames


def mbdt_kw(**kw):
    base = dict(init=None, steps=4, batch_size=2, log_every=2, preview_every=4,
                checkpoint_every=None, seed=0)
    base.update(kw)
    return base


def test_mbdt_steps_yield_losses_preview_and_checkpoint(stack, tmp_path):
    out = tmp_path / "mbdt.pt"
    gen = train.iter_train_mbdt(stack, CEUS_PSF, out=out, **mbdt_kw(checkpoint_every=2))
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert [e.done for e in events] == [0, 2, 4] and events[-1].total == 4
    assert events[0].stage == "train mbdt"
    losses = events[-1].info["losses"]
    for k in ("total", "gan_ab", "gan_ba", "cycle_a", "cycle_b", "similarity", "d_total"):
        assert np.isfinite(losses[k])
    preview = events[-1].info["preview"]
    assert preview.shape == (48, 48) and np.isfinite(preview).all() and preview.min() >= 0
    assert events[1].info["preview"] is None
    # Training changed the losses and the weights.
    h = result.history
    assert h["step"] == [1, 2, 3, 4] and len(h["total"]) == 4
    assert len(set(np.round(h["cycle_a"], 6))) > 1
    assert result.steps_done == 4 and result.checkpoint_path == out
    ck = load_checkpoint(out, kind="mbdt", device="cpu")
    assert ck.step == 4 and ck.psf["sigma_y_px"] == 1.5 and ck.psf["sigma_x_px"] == 2.0
    assert ck.extra["history"]["total"] == h["total"]
    norm = ck.extra["normalisation"]
    assert norm["percentile"] == 99.9
    from napari_cycleulm.intensity import mbdt_input_scale

    assert norm["scale"][0] == pytest.approx(mbdt_input_scale(stack), rel=1e-5)
    assert ck.extra["sigma_range_px"] == ((0.75, 0.75), (1.0, 1.0))
    assert ck.extra["training"]["batch_size"] == 2 and ck.config == result.model.config
    assert set(ck.optimizer_state) == {"g", "d"}
    for a, b in zip(ck.model.state_dict().values(), result.model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu())
    assert not list(tmp_path.glob("*.part"))


def test_mbdt_roi_sampling_stays_inside_the_roi():
    frames = np.zeros((5, 100, 100), np.float32)
    mask = np.zeros((100, 100), bool)
    mask[10:70, 30:95] = True
    frames[:, mask] = 1.0
    src = train._CeusSource(frames, CEUS_PSF, mask, 40)
    patches = src.sample(np.random.default_rng(1), 200)
    assert patches.shape == (200, 3, 40, 40)
    inside = (patches > 0.5).mean(axis=(1, 2, 3))
    assert inside.min() >= 0.9  # at least 90 % of every patch in the ROI
    # ROI polygons work as well as masks.
    rect = np.array([[10, 30], [10, 94], [69, 94], [69, 30]], float)
    gen = train.iter_train_mbdt(frames + 0.01, CEUS_PSF, roi_mask=[rect], **mbdt_kw(steps=0))
    assert next(gen).done == 0


def test_mbdt_bad_input_raises(stack):
    with pytest.raises(CycleULMError, match="at least 3"):
        train.iter_train_mbdt(stack[:2], CEUS_PSF, **mbdt_kw())
    with pytest.raises(CycleULMError, match="PSF"):
        train.iter_train_mbdt(stack, None, **mbdt_kw())
    small = np.zeros((48, 48), bool)
    small[5:35, 5:45] = True
    with pytest.raises(CycleULMError, match="smaller than one 40x40 patch"):
        train.iter_train_mbdt(stack, CEUS_PSF, roi_mask=small, **mbdt_kw())
    with pytest.raises(CycleULMError, match="smaller than one"):
        train.iter_train_mbdt(stack[:, :30], CEUS_PSF, **mbdt_kw())
    with pytest.raises(CycleULMError, match="steps"):
        train.iter_train_mbdt(stack, CEUS_PSF, **mbdt_kw(steps=-1))


def test_mbdt_default_init_falls_back_to_scratch_with_a_note(stack, tmp_path, monkeypatch):
    monkeypatch.setattr(train.loop, "_default_weights_path", lambda kind: tmp_path / "none.pt")
    first = next(train.iter_train_mbdt(stack, CEUS_PSF, **mbdt_kw(init="default")))
    assert any("from scratch" in n for n in first.info["notes"])
    # init=path fine-tunes that checkpoint: with 0 steps the weights are unchanged.
    r = train.train_mbdt(stack, CEUS_PSF, out=tmp_path / "a.pt", **mbdt_kw(steps=1, seed=3))
    monkeypatch.setattr(train.loop, "_default_weights_path", lambda kind: tmp_path / "a.pt")
    r2 = train.train_mbdt(stack, CEUS_PSF, **mbdt_kw(steps=0, init="default"))
    assert "default" in r2.config["init"]
    for a, b in zip(r.model.state_dict().values(), r2.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_continues_from_the_stored_step(stack, tmp_path):
    a = tmp_path / "a.pt"
    train.train_mbdt(stack, CEUS_PSF, out=a, **mbdt_kw(steps=3))
    events = []
    r = train.train_mbdt(stack, CEUS_PSF, out=tmp_path / "b.pt", resume=a,
                         progress=events.append, **mbdt_kw(steps=5))
    assert events[0].done == 3 and events[-1].done == 5
    assert r.history["step"] == [1, 2, 3, 4, 5] and r.steps_done == 5
    assert load_checkpoint(tmp_path / "b.pt", device="cpu").step == 5
    assert any("resumed" in n for n in r.config["notes"])


@pytest.mark.parametrize("save_on_stop, expected_step", [(False, 2), (True, 3)])
def test_stop_keeps_the_last_good_checkpoint(stack, tmp_path, save_on_stop, expected_step):
    out = tmp_path / "stop.pt"
    gen = train.iter_train_mbdt(stack, CEUS_PSF, out=out, save_on_stop=save_on_stop,
                                **mbdt_kw(steps=10, log_every=1, checkpoint_every=2))
    for ev in gen:
        if ev.done == 3:
            break
    gen.close()  # napari's Stop
    ck = load_checkpoint(out, device="cpu")
    assert ck.step == expected_step
    assert len(ck.extra["history"]["total"]) == expected_step
    assert not list(tmp_path.glob("*.part"))


def test_drive_callback_cancels():
    def stop_at_2(ev):
        return ev.done < 2

    with pytest.raises(Cancelled):
        train.train_mblnet(MB_PSF, steps=10, batch_size=2, log_every=1, progress=stop_at_2)


def _first_last(values, k=10):
    v = np.asarray(values)
    return v[:k].mean(), v[-k:].mean()


def test_mblnet_loss_decreases_and_checkpoint_stores_the_range(tmp_path):
    r = train.train_mblnet(MB_PSF, steps=40, batch_size=8, log_every=20, preview_every=40,
                           out=tmp_path / "l.pt", seed=1)
    first, last = _first_last(r.history["total"])
    assert last < first - 0.1
    ck = load_checkpoint(tmp_path / "l.pt", kind="mblnet", device="cpu")
    assert ck.extra["sigma_range_px"] == ((0.75, 0.75), (1.0, 1.0))
    g = train.train_mblnet(sigma_range_px=(0.5, 2.5), steps=1, batch_size=2, out=tmp_path / "g.pt")
    assert load_checkpoint(tmp_path / "g.pt", device="cpu").extra["sigma_range_px"] == (
        (0.5, 2.5), (0.5, 2.5))
    assert g.steps_done == 1
    with pytest.raises(CycleULMError, match="MB-only PSF"):
        train.iter_train_mblnet()
    with pytest.raises(CycleULMError, match="sigma_range_px"):
        train.iter_train_mblnet(sigma_range_px=(2.0, 1.0))


def test_mbtnet_loss_decreases():
    events = []
    r = train.train_mbtnet(MB_PSF, steps=30, batch_size=4, log_every=10, preview_every=30,
                           seed=2, progress=events.append)
    first, last = _first_last(r.history["total"])
    assert last < first
    assert set(events[-1].info["losses"]) == {"total", "trajectory", "velocity"}
    assert events[-1].info["preview"].shape == (160, 160)
    with pytest.raises(CycleULMError, match="upsampling"):
        train.iter_train_mbtnet(MB_PSF, upsampling=2)


def test_same_seed_same_training_on_cpu():
    def run(seed):
        return train.train_mblnet(MB_PSF, steps=3, batch_size=4, seed=seed, device="cpu").history

    a, b, c = run(5), run(5), run(6)
    assert a["total"] == b["total"]
    assert a["total"] != c["total"]


def test_validate_mblnet_and_mbtnet_report_metrics():
    from napari_cycleulm.dl.nets import MBLNet, MBTNet

    m = train.validate_mblnet(MBLNet(), MB_PSF, n=8)
    assert {"recall", "precision", "f1", "mean_error_px"} <= set(m)
    assert m["recall"] == 0.0  # an untrained net (p ~ 0.02) detects nothing
    v = train.validate_mbtnet(MBTNet(), (0.5, 1.5), n=2)
    assert 0 <= v["dice"] <= 1 and np.isfinite(v["velocity_rmse_px_per_frame"])
    # One SR pixel of tolerance is stricter than one input pixel (4 SR pixels).
    assert v["trajectory_recall_sr1"] <= v["trajectory_recall"]
    assert v["trajectory_precision_sr1"] <= v["trajectory_precision"]



def test_validate_mbtnet_velocity_on_detected_paths():
    """The detected-path velocity error counts only the true path pixels the map detects."""
    import torch

    class Constant(torch.nn.Module):  # traj logit `logit` everywhere, zero velocity
        def __init__(self, logit):
            super().__init__()
            self.config = {"n_frames": 8}
            self.logit = logit

        def forward(self, x):
            n, _, h, w = x.shape
            out = torch.zeros(n, 3, 4 * h, 4 * w)
            out[:, 0] = self.logit
            return out

    sees_all = train.validate_mbtnet(Constant(10.0), (0.5, 1.5), n=2)
    assert sees_all["detected_path_fraction"] == 1.0
    # Zero velocity: the error is the speed itself, on all and on detected paths alike.
    assert sees_all["velocity_rmse_detected_px_per_frame"] == pytest.approx(sees_all["velocity_rms_px_per_frame"])
    assert sees_all["velocity_rmse_px_per_frame"] == pytest.approx(sees_all["velocity_rms_px_per_frame"])
    blind = train.validate_mbtnet(Constant(-10.0), (0.5, 1.5), n=2)
    assert blind["detected_path_fraction"] == 0.0
    assert np.isnan(blind["velocity_rmse_detected_px_per_frame"])

def _bubble_stack(n_per_frame, seed=0, shape=(20, 80, 80)):
    rng = np.random.default_rng(seed)
    pts = [(f, y, x) for f in range(shape[0]) for y, x in rng.uniform(6, shape[1] - 6, (n_per_frame, 2))]
    frames = draw_bubbles(shape, pts, (1.5, 2.0), rng.uniform(0.5, 1.0, len(pts)))
    frames += np.abs(rng.normal(0, 0.03, frames.shape)).astype(np.float32)
    return frames / np.percentile(frames, 99.9)


def test_domain_b_matches_the_data_bubble_count():
    """Domain B's count follows the data: a sparse stack gets few synthetic bubbles per patch."""
    sparse, info_s = train.domain_b_config(_bubble_stack(2), CEUS_PSF, n_frames=20)
    dense, info_d = train.domain_b_config(_bubble_stack(12), CEUS_PSF, n_frames=20)
    # 2 bubbles in 80x80 -> 0.5 per 40x40 patch; 12 -> 3 per patch.  The
    # white noise adds some specks; overlaps hide some bubbles.
    assert 0.25 < info_s["mbs_per_patch"] < 1.25
    assert 1.5 < info_d["mbs_per_patch"] < 4.5
    assert sparse.n_min == 0 and dense.n_min == 0
    assert 2 <= sparse.n_max <= 5
    assert dense.n_max >= 2 * sparse.n_max
    lo, hi = dense.intensity_range
    assert 0.05 <= lo < hi <= 1.5


def test_a_known_count_replaces_the_detector_capped_one():
    """A simulated stack's true density sets domain B's count; the amplitudes are still measured."""
    frames = _bubble_stack(12)
    measured, info_m = train.domain_b_config(frames, CEUS_PSF, n_frames=20)
    known, info_k = train.domain_b_config(frames, CEUS_PSF, n_frames=20, mean_count=6.0)
    assert info_k["mbs_per_patch"] == 6.0 and info_k["mbs_per_patch_measured"] == info_m["mbs_per_patch"]
    assert known.n_max == 12 and known.intensity_range == measured.intensity_range
    with pytest.raises(CycleULMError, match="mean_count"):
        train.domain_b_config(frames, CEUS_PSF, n_frames=20, mean_count=-1.0)


def test_mbdt_takes_known_domain_b_counts_per_stack(stack):
    res = train.train_mbdt([stack, stack], [CEUS_PSF, CEUS_PSF], domain_b_counts=[4.0, None], **mbdt_kw(steps=1))
    per_stack = res.config["domain_b_measured"]
    assert per_stack[0]["mbs_per_patch"] == 4.0
    assert per_stack[1]["mbs_per_patch"] == per_stack[1]["mbs_per_patch_measured"]
    assert res.config["domain_b_counts"] == "known (given)"
    with pytest.raises(CycleULMError, match="domain_b_counts"):
        train.train_mbdt(stack, CEUS_PSF, domain_b_counts=[1.0, 2.0], **mbdt_kw(steps=1))


def test_mbdt_domain_b_defaults_to_the_data_and_records_it(stack):
    gen = train.iter_train_mbdt(stack, CEUS_PSF, **mbdt_kw(steps=1))
    res = drive(gen)
    assert res.config["domain_b"] == "matched to the data"
    assert res.config["domain_b_measured"][0]["frames_measured"] == len(stack)
    given = train.train_mbdt(stack, CEUS_PSF, synthetic_config=SyntheticConfig(n_max=5), **mbdt_kw(steps=1))
    assert given.config["domain_b"] == "given" and given.config["synthetic_config"]["n_max"] == 5
