"""The command line, end to end on small inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cycleulm.cli import main
from napari_cycleulm.psf import PSF
from napari_cycleulm.io.tables import Localisations


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", str(out), "--frames", "40", "--height", "96", "--width", "128",
                 "--density", "6", "--seed", "5"]) == 0
    return out


def test_simulate_writes_frames_and_ground_truth(sim_dir):
    assert (sim_dir / "frames.tif").is_file()
    gt = Localisations.from_csv(sim_dir / "ground_truth.csv")
    assert len(gt) > 0 and gt["frame"].max() < 40


def test_psf_automatic_prints_fwhm(sim_dir, tmp_path, capsys):
    out = tmp_path / "psf.json"
    assert main(["psf", str(sim_dir / "frames.tif"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FWHM y" in text and "px" in text
    psf = PSF.from_json(out)
    meta = json.loads((sim_dir / "metadata.json").read_text())
    assert abs(psf.fwhm_y_px / meta["psf_fwhm_y_px"] - 1) < 0.3
    assert psf.pixel_size_um == meta["pixel_size_um"]  # read from metadata.json beside the input


def test_psf_from_points_csv(sim_dir, tmp_path, capsys):
    gt = Localisations.from_csv(sim_dir / "ground_truth.csv")
    # Bubbles with no other bubble within 16 px (the patch) in the same frame, away from the borders.
    keep = []
    for i in range(len(gt)):
        same = gt["frame"] == gt["frame"][i]
        d = np.hypot(gt["y"][same] - gt["y"][i], gt["x"][same] - gt["x"][i])
        if (d < 16).sum() == 1 and 14 < gt["y"][i] < 82 and 14 < gt["x"][i] < 114:
            keep.append(i)
    assert len(keep) >= 5
    pts = tmp_path / "pts.csv"
    gt.select(np.array(keep[:40])).to_csv(pts)
    assert main(["psf", str(sim_dir / "frames.tif"), "--points", str(pts), "--out", str(tmp_path / "p.json")]) == 0
    assert "FWHM y" in capsys.readouterr().out


def test_run_and_evaluate(sim_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(sim_dir / "frames.tif"), "--pipeline", "baseline1", "--out", str(out),
                 "--block-size", "16", "--quiet"]) == 0
    for name in ("localisations.csv", "tracks.csv", "sr_density.tif", "sr_velocity.tif", "preview.png"):
        assert (out / name).is_file()
    capsys.readouterr()
    assert main(["evaluate", str(sim_dir / "ground_truth.csv"), str(out / "localisations.csv"),
                 "--tolerance", "1", "--out", str(tmp_path / "ev.json")]) == 0
    text = capsys.readouterr().out
    assert "recall" in text and "precision" in text
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert 0 < ev["recall"] <= 1


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["psf", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 4, 5)))
    assert main(["run", str(bad), "--pipeline", "baseline1", "--out", str(tmp_path / "o")]) == 2
    assert "error" in capsys.readouterr().err


def test_demo_runs_on_the_sample(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--pipelines", "baseline1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "PSF estimated" in text and "F1" in text
    assert (tmp_path / "demo" / "baseline1" / "sr_density.tif").is_file()


# -- CycleULM commands -------------------------------------------------------
@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    from ._tiny_nets import tiny_checkpoints

    return tiny_checkpoints(tmp_path_factory.mktemp("nets"))


@pytest.fixture(scope="module")
def small(sim_dir, tmp_path_factory):
    """The first 12 frames, 40x48 px, of the simulation (the networks are slow on 2 CPU cores)."""
    from napari_cycleulm.io import read_stack, write_stack

    out = tmp_path_factory.mktemp("small") / "frames.tif"
    write_stack(out, read_stack(sim_dir / "frames.tif")[:12, :40, :48])
    return out


def test_translate_streams_to_a_tiff_equal_to_one_shot(small, nets, tmp_path, capsys):
    import tifffile

    from napari_cycleulm.io import read_stack
    from napari_cycleulm.dl.mbdt_inference import translate

    out = tmp_path / "mb.tif"
    assert main(["translate", str(small), "--mbdt", str(nets["mbdt"]), "--out", str(out),
                 "--block-size", "5", "--device", "cpu", "--quiet"]) == 0
    assert "translated 12 frames" in capsys.readouterr().out
    mb = tifffile.imread(out)
    frames = read_stack(small)
    np.testing.assert_allclose(mb, translate(frames, nets["mbdt"], device="cpu"), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*.part"))


def test_run_cycleulm_pipeline_with_checkpoints(small, nets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(small), "--pipeline", "cycleulm-e2e", "--out", str(out), "--psf", "auto",
                 "--mbdt", str(nets["mbdt"]), "--mbtnet", str(nets["mbtnet"]), "--block-size", "5",
                 "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "cycleulm-e2e: 12 frames" in text and "not produced" in text
    assert (out / "sr_density.tif").is_file() and (out / "run.json").is_file()
    assert json.loads((out / "run.json").read_text())["params"]["denoise_params"]["tta"] == "lateral"


def test_mirror_averaging_option_reaches_mbdt(small, nets, tmp_path, capsys):
    """``--mbdt-tta none`` runs MB-DT once: the translate command and the pipeline record and use it."""
    import tifffile

    from napari_cycleulm.io import read_stack
    from napari_cycleulm.dl.mbdt_inference import translate

    out = tmp_path / "mb.tif"
    assert main(["translate", str(small), "--mbdt", str(nets["mbdt"]), "--out", str(out),
                 "--mbdt-tta", "none", "--device", "cpu", "--quiet"]) == 0
    frames = read_stack(small)
    single = translate(frames, nets["mbdt"], device="cpu", tta="none")
    np.testing.assert_allclose(tifffile.imread(out), single, rtol=1e-5, atol=1e-6)
    assert np.abs(single - translate(frames, nets["mbdt"], device="cpu")).max() > 1e-4  # the option matters
    run = tmp_path / "run"
    assert main(["run", str(small), "--pipeline", "cycleulm-loc", "--out", str(run), "--mbdt-tta", "none",
                 "--mbdt", str(nets["mbdt"]), "--mblnet", str(nets["mblnet"]), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["params"]["denoise_params"]["tta"] == "none"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["run", str(small), "--pipeline", "cycleulm-loc", "--out", str(run), "--mbdt-tta", "both"])
    assert "invalid choice" in capsys.readouterr().err


def test_model_errors_are_one_line(small, nets, tmp_path, capsys, monkeypatch):
    from napari_cycleulm.dl import models

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    frames = str(small)
    assert main(["translate", frames, "--mbdt", str(bad), "--out", str(tmp_path / "m.tif")]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["run", frames, "--pipeline", "cycleulm-loc", "--out", str(tmp_path / "o"),
                 "--mbdt", str(nets["mblnet"]), "--quiet"]) == 2
    assert "MBL-Net checkpoint but an MB-DT model was asked for" in capsys.readouterr().err
    monkeypatch.setitem(models.DEFAULT_WEIGHTS, "mbdt", tmp_path / "mbdt_default.pt")
    assert main(["run", frames, "--pipeline", "cycleulm-ncc", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no default weights shipped for MB-DT" in err and err.count("\n") == 1
    assert main(["translate", frames, "--out", str(tmp_path / "m.npy")]) == 2
    assert ".tif" in capsys.readouterr().err


def _fake_trainer(calls, kind):
    """Stands in for train.iter_train_*: records its arguments, writes a tiny checkpoint."""
    from napari_cycleulm.dl.checkpoint import save_checkpoint
    from napari_cycleulm.dl.nets import MBDT, MBLNet, MBTNet
    from napari_cycleulm.progress import Progress
    from napari_cycleulm.train import TrainResult

    def gen(*args, **kw):
        calls.append((kind, args, kw))
        model = {"mbdt": MBDT, "mblnet": MBLNet, "mbtnet": MBTNet}[kind](base_channels=4)
        yield Progress(1, 1, f"train {kind}", {"step": 1, "losses": {"total": 0.5}})
        save_checkpoint(kw["out"], model, kind=kind, step=1)
        return TrainResult(model=model, checkpoint_path=kw["out"], history={"total": [0.5]},
                           steps_done=1, seconds=0.01, config={})

    return gen


def test_train_commands_pass_their_arguments(sim_dir, tmp_path, capsys, monkeypatch):
    from napari_cycleulm import train

    calls = []
    for kind in ("mbdt", "mblnet", "mbtnet"):
        monkeypatch.setattr(train, f"iter_train_{kind}", _fake_trainer(calls, kind))
    psf_json = tmp_path / "psf.json"
    PSF(sigma_y_px=2.0, sigma_x_px=3.0).to_json(psf_json)
    roi = tmp_path / "roi.csv"
    roi.write_text("shape_id,y,x\n0,5,5\n0,5,90\n0,60,90\n0,60,5\n")

    assert main(["train", "mbdt", str(sim_dir / "frames.tif"), "--out", str(tmp_path / "a.pt"),
                 "--roi", str(roi), "--steps", "7", "--psf", str(psf_json), "--quiet"]) == 0
    kind, args, kw = calls[-1]
    assert args[0].shape == (40, 96, 128) and args[1].sigma_x_px == 3.0
    assert kw["steps"] == 7 and kw["init"] == "default" and len(kw["roi_mask"]) == 1
    assert "written to" in capsys.readouterr().out

    assert main(["train", "mblnet", "--psf", str(psf_json), "--out", str(tmp_path / "b.pt"),
                 "--init", "none", "--quiet"]) == 0
    kind, args, kw = calls[-1]
    assert kind == "mblnet" and args[0].sigma_y_px == 1.0  # the MB-only PSF
    assert kw["sigma_range_px"] is None and kw["init"] is None and "steps" not in kw

    assert main(["train", "mbtnet", "--sigma-range", "0.5", "1.5", "--out", str(tmp_path / "c.pt"),
                 "--quiet"]) == 0
    kind, args, kw = calls[-1]
    assert kind == "mbtnet" and args[0] is None and kw["sigma_range_px"] == (0.5, 1.5)

    # Exactly one of --psf / --sigma-range; no stack for synthetic training.
    assert main(["train", "mblnet", "--out", str(tmp_path / "d.pt")]) == 2
    assert "exactly one of --psf" in capsys.readouterr().err
    assert main(["train", "mblnet", str(sim_dir / "frames.tif"), "--sigma-range", "1", "2",
                 "--out", str(tmp_path / "d.pt")]) == 2
    assert "takes no INPUT" in capsys.readouterr().err
    assert main(["train", "mbdt", "--out", str(tmp_path / "d.pt")]) == 2
    assert "needs the CEUS stack" in capsys.readouterr().err


def test_demo_fine_tunes_mbdt_and_reports_e2e_without_localisation_scores(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--pipelines", "cycleulm-e2e", "--finetune-steps", "2",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "MB-DT fine-tuned on the sample (no labels) for 2 steps" in text
    assert "MB-DT: fine-tuned" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("cycleulm-e2e"))
    assert row.split()[3:7] == ["-", "-", "-", "-"]  # no localisations to score
    assert (out / "mbdt_finetuned.pt").is_file() and (out / "cycleulm-e2e" / "sr_density.tif").is_file()
