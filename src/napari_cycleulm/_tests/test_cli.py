"""The command line, end to end on small inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cycleulm.cli import main
from napari_cycleulm.psf import PSF
from napari_cycleulm.tables import Localisations


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
