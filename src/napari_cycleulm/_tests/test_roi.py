"""ROI masks and patch positions for MB-DT training."""

import numpy as np
import pytest

from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.roi import (
    count_patches,
    patch_corners,
    roi_from_csv,
    roi_to_csv,
    rois_to_mask,
)


def test_rectangle_mask_covers_its_pixels():
    rect = np.array([[10, 20], [10, 59], [49, 59], [49, 20]], float)  # rows 10-49, cols 20-59
    m = rois_to_mask([rect], (100, 120))
    assert m.shape == (100, 120) and m.dtype == bool
    assert m[10:50, 20:60].all()
    assert m.sum() == 40 * 40


def test_polygon_mask_triangle_area_and_union():
    tri = np.array([[0, 0], [0, 60], [60, 0]], float)
    m = rois_to_mask([tri], (64, 64))
    assert abs(m.sum() - 60 * 60 / 2) < 0.1 * 1800
    assert m[5, 5] and not m[50, 50]
    second = np.array([[50, 50], [50, 60], [60, 60], [60, 50]], float)
    both = rois_to_mask([tri, second], (64, 64))
    assert both[55, 55] and both[5, 5] and both.sum() > m.sum()


def test_3d_vertices_drop_the_frame_coordinate():
    rect2 = np.array([[10, 10], [10, 29], [29, 29], [29, 10]], float)
    rect3 = np.column_stack([np.full(4, 7.0), rect2])  # drawn on frame 7 of a stack
    assert np.array_equal(rois_to_mask([rect3], (50, 40, 40)), rois_to_mask([rect2], (40, 40)))


def test_bool_mask_passes_through_and_is_checked():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    out = rois_to_mask(mask, (30, 30))
    assert np.array_equal(out, mask) and out is not mask
    with pytest.raises(CycleULMError, match="shape"):
        rois_to_mask(mask, (30, 31))


def test_ellipse_shape_type():
    box = np.array([[0, 0], [0, 39], [39, 39], [39, 0]], float)
    m = rois_to_mask([box], (40, 40), shape_types=["ellipse"])
    assert abs(m.sum() - np.pi * 19.5**2) < 0.05 * np.pi * 19.5**2
    assert not m[0, 0] and m[20, 20]


@pytest.mark.parametrize(
    "shapes, match",
    [
        ([], "no ROI"),
        ([np.array([[1.0, 2.0], [3.0, 4.0]])], "fewer than 3"),
        ([np.array([1.0, 2.0, 3.0])], r"\(N, 2\)"),
        ([np.array([[0, 0], [0, np.nan], [5, 5]])], "NaN"),
        ([np.array([[200, 200], [200, 300], [300, 300]], float)], "does not cover"),
    ],
)
def test_malformed_shapes_raise(shapes, match):
    with pytest.raises(CycleULMError, match=match):
        rois_to_mask(shapes, (64, 64))


def test_line_shapes_are_rejected():
    with pytest.raises(CycleULMError, match="no area"):
        rois_to_mask([np.array([[0, 0], [10, 10], [20, 0]], float)], (64, 64), shape_types=["path"])


def test_patch_corners_lie_inside_the_mask():
    mask = np.zeros((120, 120), bool)
    mask[20:90, 30:100] = True  # 70x70 square
    corners = patch_corners(mask, 40, min_fraction=1.0)
    assert corners.shape == (31 * 31, 2)
    assert corners[:, 0].min() == 20 and corners[:, 0].max() == 50
    assert corners[:, 1].min() == 30 and corners[:, 1].max() == 60
    for y0, x0 in corners[::37]:
        assert mask[y0 : y0 + 40, x0 : x0 + 40].all()
    assert count_patches(mask, 40, min_fraction=1.0) == len(corners)


def test_patch_corners_default_fraction_allows_a_small_overlap_only():
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True
    corners = patch_corners(mask, 40)  # >= 90 % inside: x0 + 40 <= 54
    assert corners[:, 1].max() == 14
    fractions = [mask[y : y + 40, x : x + 40].mean() for y, x in corners]
    assert min(fractions) >= 0.9


def test_too_small_roi_raises_and_counts_zero():
    mask = np.zeros((100, 100), bool)
    mask[10:40, 10:80] = True  # only 30 rows
    assert count_patches(mask, 40) == 0
    with pytest.raises(CycleULMError, match="smaller than one 40x40 patch"):
        patch_corners(mask, 40)
    with pytest.raises(CycleULMError, match="smaller than one"):
        patch_corners(np.ones((30, 100), bool), 40)


def test_csv_round_trip(tmp_path):
    shapes = [
        np.array([[10.5, 20.25], [10.5, 60.0], [50.0, 60.0], [50.0, 20.25]]),
        np.array([[0.0, 0.0], [0.0, 30.0], [30.0, 0.0]]),
    ]
    path = roi_to_csv(shapes, tmp_path / "roi.csv")
    assert path.read_text().splitlines()[0] == "shape_id,y,x"
    back = roi_from_csv(path)
    assert len(back) == 2
    for a, b in zip(shapes, back):
        np.testing.assert_array_equal(a, b)


def test_csv_napari_export_and_errors(tmp_path):
    p = tmp_path / "napari.csv"
    p.write_text(
        "index,shape-type,vertex-index,axis-0,axis-1,axis-2\n"
        "0,rectangle,0,3,10,10\n0,rectangle,1,3,10,50\n0,rectangle,2,3,50,50\n0,rectangle,3,3,50,10\n"
    )
    (shape,) = roi_from_csv(p)
    np.testing.assert_array_equal(shape, [[10, 10], [10, 50], [50, 50], [50, 10]])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CycleULMError, match="shape_id"):
        roi_from_csv(bad)
    bad.write_text("shape_id,y,x\n0,1,oops\n")
    with pytest.raises(CycleULMError, match="line 2"):
        roi_from_csv(bad)
    with pytest.raises(CycleULMError, match="not found"):
        roi_from_csv(tmp_path / "missing.csv")
