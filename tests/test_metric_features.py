"""Fréchet distance, bilinear resizes and the FVD/FID feature networks (``tav.metrics``): values, not just shapes.

The I3D and Inception tests run the real architectures with seeded random weights written by
``save_tiny_*`` and read back through the real loaders (the pretrained files are never needed).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tav.checkpoint import save_checkpoint
from tav.errors import InputError
from tav.metrics import frechet_distance
from tav.metrics.frechet import frechet_from_stats, frechet_scipy, frechet_stats
from tav.metrics.i3d import (
    I3D,
    I3D_STATE_DICT_FILE,
    I3D_TORCHSCRIPT_FILE,
    TorchScriptI3D,
    default_i3d_path,
    i3d_features,
    load_i3d,
    save_tiny_i3d,
)
from tav.metrics.inception import (
    INCEPTION_FILE,
    INCEPTION_URL,
    TINY_INCEPTION,
    FIDInception,
    InceptionConfig,
    default_inception_path,
    inception_features,
    load_inception,
    save_tiny_inception,
)
from tav.metrics.resize import resize_bilinear, to_unit_float

T_MIN = 9  # fewest frames I3D accepts (one time step left after the 2x7x7 average pool); keeps tests fast


pytestmark = pytest.mark.usefixtures("one_blas_thread")


# ------------------------------------------------------------------------------------------- Fréchet
def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Correlated Gaussian features ``(n, d)``: a fixed random mixing matrix per seed."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def _scipy_reference(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid ``calculate_frechet_distance``, written out: np.cov, sqrtm of the product, eps retry, real part."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _exact_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance through an identity that needs no matrix square root.

    With centred features A (N_a, D), B (N_b, D): Σ_a Σ_b = AᵀA BᵀB / ((N_a-1)(N_b-1)) has the same non-zero
    eigenvalues as (A Bᵀ)(A Bᵀ)ᵀ / (...), so Tr((Σ_a Σ_b)^{1/2}) = ‖A Bᵀ‖_* / sqrt((N_a-1)(N_b-1)): the sum of
    singular values of a small (N_a, N_b) matrix, accurate to ~1e-15 relative (no square root of rounding
    noise). It serves as the high-precision reference where scipy's sqrtm of a singular product is not.
    """
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(na * nb)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (ca * ca).sum() / na + (cb * cb).sum() / nb - 2 * trace_sqrt)


def test_frechet_matches_scipy_reference_at_n_2048():
    a, b = _features(2048, 64, seed=0), _features(2048, 64, seed=1, shift=0.1)
    ref = _scipy_reference(a, b)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    distance, residual = frechet_scipy(*frechet_stats(a), *frechet_stats(b))
    assert distance == pytest.approx(ref, rel=1e-12) and residual == 0.0


def test_frechet_at_n_below_d_matches_exact_reference():
    # N=50 < D=400: both covariances have rank 49. Our eigen route agrees with the exact SVD identity to
    # ~1e-15; scipy's sqrtm of the singular product is only ~1e-7 accurate here (measured 7e-8), so it is
    # checked with a looser 1e-5 tolerance and must not be the yardstick.
    a, b = _features(50, 400, seed=2), _features(50, 400, seed=3, shift=0.05)
    exact = _exact_reference(a, b)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-6)
    assert _scipy_reference(a, b) == pytest.approx(exact, rel=1e-5)
    # unequal sample counts (one singular covariance), in both argument orders
    c = _features(600, 400, seed=4)
    assert frechet_distance(a, c) == pytest.approx(_exact_reference(a, c), rel=1e-6)
    assert frechet_distance(c, a) == pytest.approx(_exact_reference(a, c), rel=1e-6)


@pytest.mark.parametrize("n,d", [(2048, 64), (50, 400)])
def test_frechet_of_a_set_with_itself_is_zero(n, d):
    a = _features(n, d, seed=5)
    assert abs(frechet_distance(a, a)) < 1e-6
    mu, sigma = frechet_stats(a)
    assert abs(frechet_from_stats(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_mean_shift_adds_squared_norm():
    a, b = _features(300, 32, seed=6), _features(300, 32, seed=7, shift=0.2)
    v = np.random.default_rng(8).normal(size=32)
    assert frechet_distance(a, a + v) == pytest.approx(v @ v, rel=1e-9)
    # general case: ‖μ_a − μ_b − v‖² = ‖μ_a − μ_b‖² + ‖v‖² + 2 (μ_b − μ_a)·v, covariances unchanged
    expected = frechet_distance(a, b) + v @ v + 2 * (b.mean(0) - a.mean(0)) @ v
    assert frechet_distance(a, b + v) == pytest.approx(expected, rel=1e-9)


def test_frechet_torch_and_numpy_inputs_agree():
    a, b = _features(200, 48, seed=9).astype(np.float32), _features(200, 48, seed=10, shift=0.3).astype(np.float32)
    ours = frechet_distance(a, b)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == ours
    assert frechet_distance(torch.from_numpy(a).double().requires_grad_(), b) == ours  # float32 -> float64 exactly
    mu1, s1 = frechet_stats(torch.from_numpy(a))
    assert mu1.dtype == np.float64 and np.allclose(s1, np.cov(a.astype(np.float64), rowvar=False), rtol=1e-12)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))


# ------------------------------------------------------------------------------------------- resizing
def test_tf1_resize_matches_hand_values():
    x = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)
    # TF1 grid: source = i * 2/4 = 0, 0.5, 1, 1.5 -> (lower, upper, weight) = (0,1,0) (0,1,.5) (1,1,0) (1,1,.5)
    expected = torch.tensor([[0.0, 2.0, 4.0, 4.0],
                             [4.0, 6.0, 8.0, 8.0],
                             [8.0, 10.0, 12.0, 12.0],
                             [8.0, 10.0, 12.0, 12.0]])
    assert torch.equal(resize_bilinear(x, 4, mode="tf1")[0, 0], expected)
    # downsampling 3 -> 2 columns: source 0, 1.5 -> [a, (b + c) / 2]; rows 1 -> 3: all copies
    y = torch.tensor([[0.0, 10.0, 20.0]]).view(1, 1, 1, 3)
    assert torch.equal(resize_bilinear(y, (3, 2), mode="tf1")[0, 0], torch.tensor([[0.0, 15.0]] * 3))


def test_torch_resize_is_f_interpolate_and_differs_from_tf1():
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x, size=(11, 13), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(resize_bilinear(x, (11, 13), mode="torch"), ref)
    assert not torch.allclose(resize_bilinear(x, (11, 13), mode="tf1"), ref, atol=1e-3)
    assert resize_bilinear(x, (7, 5), mode="tf1") is x  # identity grid at equal size
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_bilinear(x, 4, mode="area")


def test_clean_resize_is_pil_bicubic_per_channel_and_antialiased():
    from PIL import Image

    from tav.metrics.resize import resize_clean

    frames = np.random.default_rng(0).integers(0, 256, size=(2, 40, 30, 3), dtype=np.uint8)
    out = resize_clean(frames, 16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    ref = Image.fromarray(frames[1, :, :, 2].astype(np.float32), mode="F").resize((16, 16), Image.BICUBIC)
    assert np.allclose(out[1, 2].numpy(), np.clip(np.asarray(ref), 0, 255) / 255.0, atol=1e-6)
    assert torch.equal(resize_clean(frames.astype(np.float32) / 255.0, 16), out)  # float input in [0, 1]
    # a 1-px checkerboard shrunk 3.2x: the antialiased resize averages it to grey, the bilinear one aliases
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[None, :, :, None].repeat(3, -1)
    clean = resize_clean(board, 20)
    plain = resize_bilinear(torch.from_numpy(board).permute(0, 3, 1, 2).float() / 255, 20, mode="torch")
    assert (clean - 0.5).abs()[..., 2:-2, 2:-2].max() < 0.1 and (plain - 0.5).abs().max() > 0.2


def test_to_unit_float_converts_uint8_and_checks_float_range():
    frames = np.array([[0, 51, 255]], dtype=np.uint8)
    assert torch.allclose(to_unit_float(frames), torch.tensor([[0.0, 0.2, 1.0]]))
    assert to_unit_float(torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_unit_float(torch.tensor([0.0, 255.0]))


# ------------------------------------------------------------------------------------------- I3D
class _StyleGANStyleI3D(nn.Module):
    """The call signature of StyleGAN-V's ``i3d_torchscript.pt`` around our I3D (scripted in the test)."""

    def __init__(self, i3d: I3D):
        super().__init__()
        self.i3d = i3d

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> Tensor:
        if rescale:
            x = x * (2.0 / 255.0) - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        logits = self.i3d(x)
        return logits if return_features else logits.softmax(dim=1)


@pytest.fixture(scope="module")
def tiny_i3d(tmp_path_factory):
    path = save_tiny_i3d(tmp_path_factory.mktemp("i3d") / I3D_STATE_DICT_FILE, seed=0)
    return path, load_i3d(path)


def _videos(n: int, t: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, t, h, w, 3), dtype=np.uint8)


def test_i3d_key_layout_is_videogpt_tats():
    shapes = {k: tuple(v.shape) for k, v in I3D().state_dict().items()}
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_1a_7x7.bn.running_var"] == (64,)
    assert shapes["Conv3d_2c_3x3.conv3d.weight"] == (192, 64, 3, 3, 3)
    assert shapes["Mixed_3b.b1b.conv3d.weight"] == (128, 96, 3, 3, 3)
    assert shapes["Mixed_4f.b3b.conv3d.weight"] == (128, 528, 1, 1, 1)
    assert shapes["Mixed_5c.b0.conv3d.weight"] == (384, 832, 1, 1, 1)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1)
    assert shapes["logits.conv3d.bias"] == (400,)
    assert "Conv3d_1a_7x7.conv3d.bias" not in shapes and "logits.bn.weight" not in shapes
    # the count of VideoGPT/TATS InceptionI3d(400): 344 entries (num_batches_tracked included), 12 697 264 weights
    assert len(shapes) == 344 and sum(p.numel() for p in I3D().parameters()) == 12_697_264


def test_i3d_state_dict_file_loads_and_gives_features(tiny_i3d):
    path, model = tiny_i3d
    assert isinstance(model, I3D) and not model.training
    feats = i3d_features(model, _videos(3, T_MIN, 32, 40, seed=0), batch_size=2)  # remainder batch of 1 kept
    assert feats.shape == (3, 400) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    assert (feats[0] - feats[1]).abs().max() > 1e-3


def test_i3d_file_without_num_batches_tracked_loads(tmp_path, tiny_i3d):
    # the converted TF-Hub file (VideoGPT) holds no num_batches_tracked buffers; strict loading accepts that
    state = torch.load(tiny_i3d[0], weights_only=True)
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "legacy.pt")
    assert isinstance(load_i3d(tmp_path / "legacy.pt"), I3D)


def test_i3d_torchscript_archive_matches_state_dict_path(tmp_path, tiny_i3d):
    path, model = tiny_i3d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the released format
        scripted = torch.jit.script(_StyleGANStyleI3D(load_i3d(path)))
        torch.jit.save(scripted, str(tmp_path / I3D_TORCHSCRIPT_FILE))
    ts_model = load_i3d(tmp_path / I3D_TORCHSCRIPT_FILE)
    assert isinstance(ts_model, TorchScriptI3D) and ts_model.stylegan_v_call
    videos = _videos(1, T_MIN, 24, 24, seed=1)
    expected = i3d_features(model, videos)
    got = i3d_features(ts_model, videos)  # called with return_features=True: logits, not softmax
    assert got.shape == (1, 400)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_i3d_channel_order_changes_features(tiny_i3d):
    red = np.zeros((1, T_MIN, 16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    feats = i3d_features(tiny_i3d[1], np.concatenate([red, red[..., ::-1]]))  # RGB red vs the same frames as BGR
    assert (feats[0] - feats[1]).abs().max() > 1e-2


def test_i3d_missing_file_errors_name_files_and_flag(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"nope\.pt.*--i3d_ckpt"):
        load_i3d(tmp_path / "nope.pt")
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path))
    with pytest.raises(InputError) as err:
        load_i3d()
    text = str(err.value)
    assert "\n" not in text and all(s in text for s in (I3D_TORCHSCRIPT_FILE, I3D_STATE_DICT_FILE, "--i3d_ckpt"))
    (tmp_path / I3D_STATE_DICT_FILE).write_bytes(b"")
    assert default_i3d_path() == tmp_path / I3D_STATE_DICT_FILE
    (tmp_path / I3D_TORCHSCRIPT_FILE).write_bytes(b"")
    assert default_i3d_path() == tmp_path / I3D_TORCHSCRIPT_FILE  # the TorchScript archive is preferred


# ------------------------------------------------------------------------------------------- Inception
def test_inception_key_layout_is_pytorch_fid():
    # pytorch-fid's file is torchvision's Inception3(num_classes=1008, aux_logits=False) state dict
    from torchvision.models import inception_v3

    ref = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False).state_dict()
    ours = FIDInception().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    assert tuple(ours["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(ours["Mixed_7c.branch_pool.conv.weight"].shape) == (192, 2048, 1, 1)
    assert tuple(ours["fc.weight"].shape) == (1008, 2048)


def test_inception_file_loads_and_gives_features(tmp_path, monkeypatch):
    path = save_tiny_inception(tmp_path / INCEPTION_FILE, seed=0)
    model = load_inception(path)
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    feats = inception_features(model, frames, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    assert (feats[0] - feats[1]).abs().max() > 1e-3
    tf1 = inception_features(model, frames[:1], resize="tf1")
    assert (tf1[0] - feats[0]).abs().max() > 1e-4  # the two resize grids give different features
    clean = inception_features(model, frames[:1], resize="clean")
    assert clean.shape == (1, 2048) and (clean[0] - feats[0]).abs().max() > 1e-4
    other = path.rename(tmp_path / "pt_inception-2015-12-05-0123abcd.pth")
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path))
    assert default_inception_path() == other  # any pt_inception-2015-12-05-*.pth is accepted


def test_narrow_inception_variant_saves_its_config_and_loads(tmp_path):
    """``TINY_INCEPTION`` (make demo): the graph's layer names with a quarter of the channels, saved as a tav
    checkpoint that records the width, rebuilt by ``load_inception``; 512 features per frame."""
    full, tiny = FIDInception().state_dict(), FIDInception(TINY_INCEPTION).state_dict()
    assert list(tiny) == list(full)
    assert tuple(tiny["Conv2d_1a_3x3.conv.weight"].shape) == (8, 3, 3, 3)
    assert tuple(tiny["Mixed_7c.branch_pool.conv.weight"].shape) == (48, 512, 1, 1)
    assert tuple(tiny["fc.weight"].shape) == (1008, 512)
    assert sum(v.numel() for v in full.values()) > 12 * sum(v.numel() for v in tiny.values())
    assert {k: v.shape for k, v in FIDInception(InceptionConfig(1.0)).state_dict().items()} == \
        {k: v.shape for k, v in full.items()}
    path = save_tiny_inception(tmp_path / "inception_tiny_random.pth", seed=0, config=TINY_INCEPTION)
    model = load_inception(path)
    assert model.config == TINY_INCEPTION and model.feature_dim == 512
    frames = np.random.default_rng(3).integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    feats = inception_features(model, frames, batch_size=2)
    assert feats.shape == (3, 512) and torch.isfinite(feats).all() and (feats[0] - feats[1]).abs().max() > 1e-3
    assert inception_features(model, frames[:0]).shape == (0, 512)
    plain = tmp_path / "plain.pth"  # the variant's tensors without their config: they do not fit the graph
    torch.save(dict(model.state_dict()), plain)
    with pytest.raises(InputError, match=r"plain\.pth: weights do not fit the TF-FID Inception"):
        load_inception(plain)
    for width in (0.0, 0.3, 1.5):
        with pytest.raises(InputError, match="multiple of 1/16"):
            InceptionConfig(width)
    odd = tmp_path / "odd.pth"  # a saved width the config refuses: the one-line error names the file
    save_checkpoint(odd, "inception", {"width": 0.3}, model.state_dict())
    with pytest.raises(InputError, match=r"odd\.pth: config: InceptionConfig\.width must be a multiple of 1/16"):
        load_inception(odd)


def test_inception_missing_file_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path))
    with pytest.raises(InputError) as err:
        load_inception()
    text = str(err.value)
    assert "\n" not in text and all(s in text for s in (INCEPTION_FILE, INCEPTION_URL, "--inception_ckpt"))
    with pytest.raises(InputError, match=r"other\.pth.*--inception_ckpt"):
        load_inception(tmp_path / "other.pth")
