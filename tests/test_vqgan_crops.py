"""Training windows of the VQGAN (tav.training.crops): exact values, placement towards detail, bad sizes."""

import pytest
import torch

from tav.errors import InputError
from tav.training.crops import crop_corners, detail_crops, detail_map


def _clip_with_square(b=3, t=4, size=32, top=20, left=5, side=3, value=0.4):
    """Dark clips (-0.4) with one bright square at rows/cols [top, top+side) x [left, left+side) in frame 1."""
    video = torch.full((b, 3, t, size, size), -0.4)
    video[:, :, 1, top:top + side, left:left + side] = value
    return video


def test_windows_hold_the_clip_values_at_their_corners():
    video = torch.arange(2 * 3 * 4 * 12 * 10, dtype=torch.float32).view(2, 3, 4, 12, 10)
    torch.manual_seed(5)
    y0, x0 = crop_corners(video, 8, 0.5)
    torch.manual_seed(5)
    windows = detail_crops(video, 8, 0.5)
    assert windows.shape == (2, 3, 4, 8, 8) and windows.is_contiguous()
    for i in range(2):
        assert 0 <= int(y0[i]) <= 4 and 0 <= int(x0[i]) <= 2
        assert torch.equal(windows[i], video[i, :, :, y0[i]:y0[i] + 8, x0[i]:x0[i] + 8])


def test_detail_map_is_the_largest_distance_from_the_clip_median():
    video = _clip_with_square(b=1)
    d = detail_map(video)
    assert d.shape == (1, 32, 32)
    assert float(d[0, 21, 6]) == pytest.approx(3 * 0.8) and float(d[0, 0, 0]) == 0.0
    assert int((d > 0).sum()) == 9


def test_full_detail_puts_every_window_over_the_detail():
    video = _clip_with_square(b=64)
    torch.manual_seed(0)
    y0, x0 = crop_corners(video, 16, 1.0)
    # the window's centre is one of the square's pixels: it covers the square's centre pixel
    assert bool(((y0 <= 21) & (21 < y0 + 16) & (x0 <= 6) & (6 < x0 + 16)).all())
    centre_y, centre_x = y0 + 8, x0 + 8
    assert set(centre_y.tolist()) <= {20, 21, 22} and set(centre_x.tolist()) <= {8}  # cols 5-7 clamp to 8


def test_no_detail_is_uniform_over_all_corners():
    video = _clip_with_square(b=4000)
    torch.manual_seed(1)
    y0, x0 = crop_corners(video, 16, 0.0)
    counts = torch.bincount(y0 * 17 + x0, minlength=17 * 17).float()
    assert int(y0.min()) == 0 and int(y0.max()) == 16 and int(x0.min()) == 0 and int(x0.max()) == 16
    assert float(counts.min()) > 0  # every one of the 289 corners occurs (expected count 13.8 each)
    assert abs(float(y0.float().mean()) - 8.0) < 0.3 and abs(float(x0.float().mean()) - 8.0) < 0.3


def test_a_half_detail_mix_lands_half_the_windows_near_the_detail():
    video = _clip_with_square(b=4000)
    torch.manual_seed(2)
    y0, x0 = crop_corners(video, 16, 0.5)
    centred = ((y0 + 8 - 21).abs() <= 1) & (x0 + 8 == 8)
    # detail draws (one half) always land there; uniform draws with 3 of the 289 centres
    expected = 0.5 + 0.5 * 3 / 289
    assert abs(float(centred.float().mean()) - expected) < 0.03


def test_a_clip_without_detail_falls_back_to_uniform():
    flat = torch.zeros(500, 3, 2, 8, 8)
    torch.manual_seed(3)
    y0, x0 = crop_corners(flat, 4, 1.0)
    assert set(y0.tolist()) == set(range(5)) and set(x0.tolist()) == set(range(5))


@pytest.mark.parametrize("size,detail,match", [(33, 0.5, "crop_size=33"), (0, 0.5, "crop_size=0"),
                                               (16, 1.5, "crop_detail=1.5"), (16, -0.1, "crop_detail")])
def test_bad_sizes_and_shares_are_one_line_errors(size, detail, match):
    with pytest.raises(InputError, match=match) as err:
        detail_crops(torch.zeros(1, 3, 2, 32, 32), size, detail)
    assert "\n" not in str(err.value)
