"""``ResultsFolder(lossless=True)`` (``--lossless_video``): the result mp4s give back the sampler's frames bit for
bit, where the default H.264 at crf 17 does not."""

import numpy as np
import pytest
import torch

from tav.data.video import read_video, to_uint8
from tav.pipelines.results import ResultsFolder, SampleRecord


def _record(gen: torch.Generator) -> SampleRecord:
    def clip():
        return torch.rand(3, 4, 16, 16, generator=gen) - 0.5  # (3, T, H, W) in [-0.5, 0.5]: noise, hard to compress

    return SampleRecord(index=0, stem="clip", caption="A red circle moves to a Flute.", real=clip(), stage1=clip(),
                        stage2=[clip()], audio=np.zeros(4 * 1600, dtype=np.float32), info={"seed": 0})


@pytest.mark.parametrize("lossless", [True, False])
def test_lossless_results_give_back_the_frames(tmp_path, lossless):
    rec = _record(torch.Generator().manual_seed(0))
    folder = ResultsFolder(tmp_path / "run", fps=30.0, sample_rate=48000, lossless=lossless)
    row = folder.write(rec)
    for key, video in (("real", rec.real), ("fake_stage1", rec.stage1), ("fake_stage2", rec.stage2[-1])):
        want = to_uint8(video).numpy()  # (T, H, W, 3) as the folder rounds it
        got, fps = read_video(tmp_path / "run" / row["files"][key])
        assert got.shape == want.shape and fps == 30.0
        if lossless:
            assert np.array_equal(got, want), key
        else:  # the lossy codec changes noise frames by several levels
            assert np.abs(got.astype(int) - want.astype(int)).mean() > 2, key
