"""dl.inference.infer: the one forward path of MB-DT, MBL-Net and MBT-Net at inference."""

from __future__ import annotations

import pytest
import torch

from napari_cycleulm.dl.inference import PRECISION_ENV, default_precision, infer, resolve_precision
from napari_cycleulm.dl.nets import MBDT, MBLNet, MBTNet
from napari_cycleulm.errors import CycleULMError


@pytest.mark.parametrize("make, shape", [
    (lambda: MBDT(base_channels=4), (2, 3, 19, 23)),
    (lambda: MBLNet(base_channels=4), (2, 1, 21, 17)),
    (lambda: MBTNet(n_frames=4, base_channels=4), (1, 4, 18, 22)),
])
def test_infer_equals_the_plain_forward_and_leaves_the_module_alone(make, shape):
    torch.manual_seed(0)
    net = make().eval()
    x = torch.rand(shape)
    with torch.no_grad():
        ref = net(x)
    before = [p.stride() for p in net.parameters()]
    y = infer(net, x, "float32")
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert not y.requires_grad
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    assert [p.stride() for p in net.parameters()] == before  # weights untouched


def test_infer_bfloat16_returns_float32_close_to_float32():
    torch.manual_seed(0)
    net = MBLNet(base_channels=4).eval()
    x = torch.rand(2, 1, 16, 16)
    y32, y16 = infer(net, x, "float32"), infer(net, x, "bfloat16")
    assert y16.dtype == torch.float32
    assert float((y16 - y32).abs().max()) < 0.1 * float(y32.abs().max()) + 1e-3
    assert not torch.equal(y16, y32)  # the autocast really ran in lower precision


def test_precision_names_and_the_environment_override(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "float32")
    assert default_precision("cpu") == "float32"
    assert resolve_precision(None) is torch.float32
    assert resolve_precision("auto") is torch.float32
    monkeypatch.setenv(PRECISION_ENV, "bfloat16")
    assert resolve_precision(None) is torch.bfloat16
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(CycleULMError, match="CYCLEULM_PRECISION"):
        default_precision("cpu")
    monkeypatch.delenv(PRECISION_ENV)
    assert default_precision("cpu") in ("float32", "bfloat16")  # the hardware decides
    assert resolve_precision("float32") is torch.float32
    assert resolve_precision("bfloat16") is torch.bfloat16
    with pytest.raises(CycleULMError, match="precision must be one of"):
        resolve_precision("fp8")


def test_resolved_networks_have_channels_last_weights_and_unchanged_outputs():
    from napari_cycleulm.dl.models import resolve_network

    torch.manual_seed(1)
    net = MBLNet(base_channels=4).eval()
    x = torch.rand(1, 1, 16, 16)
    ref = infer(net, x, "float32")
    same, _, _ = resolve_network("mblnet", net, "cpu")
    conv = next(p for p in same.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(infer(same, x, "float32"), ref, rtol=1e-4, atol=1e-5)


def test_a_pipeline_records_its_inference_precision(tmp_path, monkeypatch):
    from napari_cycleulm.pipeline import run_pipeline
    from napari_cycleulm.psf import PSF
    from napari_cycleulm.simulate import simulate

    from ._tiny_nets import tiny_checkpoints

    nets = tiny_checkpoints(tmp_path)
    frames = simulate(n_frames=6, height=32, width=40, density=5, seed=3).frames
    psf = PSF(sigma_y_px=2.0, sigma_x_px=2.5)
    for precision in ("float32", "bfloat16"):
        monkeypatch.setenv(PRECISION_ENV, precision)
        res = run_pipeline(frames, "cycleulm-ncc", psf, device="cpu", mbdt=nets["mbdt"])
        assert res.params["inference_precision"] == precision
    base = run_pipeline(frames, "baseline1", psf, device="cpu")
    assert "inference_precision" not in base.params  # no network ran


def test_default_batch_size_follows_the_frame_size_and_never_changes_results():
    from napari_cycleulm.dl.inference import BATCH_PIXELS, default_batch_size, resolve_batch_size
    from napari_cycleulm.dl.mbdt_inference import translate

    assert default_batch_size((128, 160)) == BATCH_PIXELS // (128 * 160) == 4
    assert default_batch_size((511, 659)) == 1
    assert default_batch_size((8, 8)) == 16  # capped
    assert default_batch_size((511, 659), cap=4) == 1
    assert resolve_batch_size(3, (511, 659)) == 3
    for bad in (0, 2.5, True):
        with pytest.raises(CycleULMError, match="batch_size must be a whole number"):
            resolve_batch_size(bad, (10, 10))
    torch.manual_seed(2)
    net = MBDT(base_channels=4).eval()
    frames = torch.rand(7, 24, 20).numpy()
    ref = translate(frames, net, scale=1.0, batch_size=1)
    for b in (None, 3, 7):
        assert abs(translate(frames, net, scale=1.0, batch_size=b) - ref).max() < 1e-3
