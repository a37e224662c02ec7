"""Stage-2 guidance (tav.guidance): each loss term against a hand computation, the input mapping, the views,
one guided step lowering the combined loss, and the hook's single U-Net pass. Tiny stand-in encoders."""

import math

import pytest
import torch
import torch.nn.functional as F

from tav.diffusion.samplers import ddpm_sample
from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
from tav.encoders.base import Encoder
from tav.errors import InputError
from tav.guidance import Guidance, GuidanceConfig
from tav.guidance import losses as L
from tav.guidance.guide import gaussian_kernel, smooth_frames


class PixelEncoder(Encoder):
    """Images -> their mean colour through a fixed linear map (dim 4); audio -> a linear map of the window.
    Differentiable, tiny, and easy to compute by hand. ``image_size`` 8 keeps the resize cheap."""

    name, dim, image_size, audio_rate, audio_scale = "pixel", 4, 8, 48000, 1.0

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.img = torch.nn.Parameter(torch.randn(3, 4, generator=g))
        self.aud = torch.nn.Parameter(torch.randn(4, generator=g))
        self.freeze()

    def encode_images(self, images):
        return self.preprocess_images(images).mean(dim=(2, 3)) @ self.img

    def encode_audio(self, audio):  # (N, S) -> (N, 4): windowed energy in 4 bands of the window
        return torch.stack([c.pow(2).mean(-1) for c in audio.chunk(4, dim=-1)], -1) * self.aud.sign()

    def encode_texts(self, captions):
        return torch.stack([torch.tensor([len(c), 1.0, -1.0, 0.5]) for c in captions])


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ------------------------------------------------------------------------------------------- terms
def test_audio_and_text_losses_equal_hand_computation():
    img, aud, txt = unit(2, 3, 4), unit(2, 3, 4, seed=1), unit(2, 4, seed=2)
    want_a = torch.tensor([sum(1 - float(img[b, t] @ aud[b, t]) for t in range(3)) / 3 for b in range(2)])
    torch.testing.assert_close(L.audio_loss(img, aud), want_a)
    want_t = torch.tensor([sum(1 - float(img[b, t] @ txt[b]) for t in range(3)) / 3 for b in range(2)])
    torch.testing.assert_close(L.text_loss(img, txt), want_t)
    views = unit(2, 3, 5, 4, seed=3)  # (B, T, V, D): mean over frames and views
    want_v = torch.tensor([float((1 - (views[b] * aud[b][:, None]).sum(-1)).mean()) for b in range(2)])
    torch.testing.assert_close(L.audio_loss(views, aud), want_v)


def test_direction_loss_is_one_minus_cosine_of_differences():
    img = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]]])  # deltas (-1, 1, 0) then 0
    aud = torch.tensor([[[0.0, 0, 1], [0, 0, 1], [1.0, 0, 1]]])  # deltas 0 then (1, 0, 0)
    # pair 1: cos((-1,1,0), 0) = 0 -> 1; pair 2: cos(0, (1,0,0)) = 0 -> 1
    torch.testing.assert_close(L.direction_loss(img, aud), torch.tensor([1.0]))
    same = unit(1, 4, 3)
    torch.testing.assert_close(L.direction_loss(same, same), torch.tensor([0.0]), atol=1e-6, rtol=0)
    anti = torch.tensor([[[0.0, 0], [1.0, 0]]]), torch.tensor([[[0.0, 0], [-1.0, 0]]])
    torch.testing.assert_close(L.direction_loss(*anti), torch.tensor([2.0]))


def test_range_loss_reduction():
    x = torch.zeros(1, 1, 2, 2, 3)
    x[0, 0, 0, 0, 0] = 0.7  # 0.2 over
    x[0, 0, 1, 1, 2] = -1.5  # 1.0 under
    # upstream reduction: mean over (C, T, H) = 4 cells, sum over W
    torch.testing.assert_close(L.range_loss(x), torch.tensor([(0.2 ** 2 + 1.0) / 4]))
    torch.testing.assert_close(L.range_loss(x, -1.0, 1.0), torch.tensor([0.5 ** 2 / 4]))


def test_augmented_views_keep_view_zero_and_are_seeded():
    img = torch.rand(2, 3, 16, 16, requires_grad=True)
    v1 = L.augmented_views(img, 4, torch.Generator().manual_seed(5))
    v2 = L.augmented_views(img, 4, torch.Generator().manual_seed(5))
    assert v1.shape == (2, 4, 3, 16, 16)
    torch.testing.assert_close(v1[:, 0], img)
    torch.testing.assert_close(v1, v2)
    assert not torch.allclose(v1[:, 1:], img[:, None].expand(-1, 3, -1, -1, -1))
    v1.sum().backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    ident = L.augmented_views(img, 3, torch.Generator().manual_seed(0), degrees=0, translate=0, distortion=0)
    torch.testing.assert_close(ident[:, 1], img, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- guidance
def _guidance(**kw):
    schedule = GaussianSchedule.from_config(ProcessConfig(steps=100), respacing="10")
    enc, clip = PixelEncoder(), PixelEncoder()
    cfg = GuidanceConfig(**{"audio_lambda": 1.0, "direction_lambda": 1.0, "text_lambda": 1.0, "range_lambda": 1.0,
                            "audio_window_s": 0.01, **kw})
    return Guidance(cfg, schedule, audio_encoder=enc, clip=clip), enc, clip


def test_terms_use_the_shifted_frames_and_precomputed_embeddings():
    g, enc, clip = _guidance()
    audio = torch.rand(2, 4 * 1600) - 0.5
    cond = g.prepare(audio, ["a cat", "a dog barks"], 48000, n_frames=4)
    assert cond.audio.shape == (2, 4, 4) and cond.text.shape == (2, 4)
    x = torch.rand(2, 3, 4, 8, 8) - 0.5
    terms = g.loss_terms(x, x, cond)
    frames = x.transpose(1, 2).flatten(0, 1) + 0.5  # default mapping: [-0.5, 0.5] -> [0, 1]
    img = L.normalize(enc.encode_images(frames)).view(2, 4, 4)
    torch.testing.assert_close(terms["audio"], L.audio_loss(img, cond.audio))
    torch.testing.assert_close(terms["text"], L.text_loss(L.normalize(clip.encode_images(frames)).view(2, 4, 4),
                                                          cond.text))
    quirky, enc_q, _ = _guidance(faithful_quirks=True)
    cond_q = quirky.prepare(audio, ["a cat", "a dog barks"], 48000, n_frames=4)
    img_q = L.normalize(enc_q.encode_images(x.transpose(1, 2).flatten(0, 1))).view(2, 4, 4)  # no +0.5
    torch.testing.assert_close(quirky.loss_terms(x, x, cond_q)["audio"], L.audio_loss(img_q, cond_q.audio))


def test_one_step_along_the_gradient_lowers_the_combined_loss():
    g, _, _ = _guidance(range_lambda=0.0)
    cond = g.prepare(torch.rand(1, 4 * 1600) - 0.5, ["a red circle"], 48000, n_frames=4)
    x = (torch.rand(1, 3, 4, 8, 8) - 0.5).requires_grad_()
    loss = g.total(g.loss_terms(x, x, cond))
    grad = torch.autograd.grad(loss, x)[0]
    with torch.no_grad():
        after = g.total(g.loss_terms(x - 1e-2 * grad / grad.norm(), x, cond))
    assert float(after) < loss.item()


def test_checkpointing_recomputes_the_towers_and_keeps_the_gradient():
    """``Guidance.checkpointing`` (``--guidance_checkpointing``): each image tower runs again in the backward, and
    the gradient is the one without it."""
    g, enc, clip = _guidance(range_lambda=0.0)
    calls = []
    for tower in (enc, clip):
        def counted(frames, encode=tower.encode_images):
            calls.append(1)
            return encode(frames)
        tower.encode_images = counted
    cond = g.prepare(torch.rand(2, 4 * 1600) - 0.5, ["a red circle", "a blue square"], 48000, n_frames=4)
    x = torch.rand(2, 3, 4, 8, 8) - 0.5
    grads = []
    for flag in (False, True):
        g.checkpointing = flag
        calls.clear()
        x_in = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(g.total(g.loss_terms(x_in, x_in, cond)), x_in)[0])
        assert len(calls) == (4 if flag else 2)  # both towers, each once more in the backward when checkpointed
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-6)


def test_hook_reuses_the_step_network_call_and_batches_independently():
    g, _, _ = _guidance(range_lambda=0.0)
    calls = []

    def net(x, t):
        calls.append(1)
        return torch.cat([0.1 * x, torch.zeros_like(x)], 1)

    audio = torch.rand(2, 4 * 1600) - 0.5
    cond = g.prepare(audio, ["one", "two two"], 48000, n_frames=4)
    init = torch.rand(2, 3, 4, 8, 8) - 0.5
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    both = ddpm_sample(net, g.schedule, init.shape, x_init=init, skip_timesteps=2, cond_fn=g.cond_fn(cond),
                       generators=gens)
    assert len(calls) == 8  # 10 respaced steps, 2 skipped: one network call per step, guidance included
    cond1 = g.prepare(audio[1:], ["two two"], 48000, n_frames=4)
    one = ddpm_sample(net, g.schedule, init[1:].shape, x_init=init[1:], skip_timesteps=2, cond_fn=g.cond_fn(cond1),
                      generators=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)
    unguided = ddpm_sample(net, g.schedule, init.shape, x_init=init, skip_timesteps=2,
                           generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert not torch.allclose(both, unguided)


def test_config_errors():
    with pytest.raises(InputError, match="audio_emb_model"):
        GuidanceConfig(audio_encoder="STFT")
    schedule = GaussianSchedule.from_config(ProcessConfig(steps=10))
    with pytest.raises(InputError, match="CLIP"):
        Guidance(GuidanceConfig(), schedule, audio_encoder=PixelEncoder(), clip=None)
    g, _, _ = _guidance()
    with pytest.raises(InputError, match="empty"):
        g.prepare(torch.zeros(1, 1600 * 4), [" "], 48000, n_frames=4)
    assert math.isclose(GuidanceConfig().audio_lambda, 1e4)


# ------------------------------------------------------------------------------------------- gradient smoothing
def test_smooth_frames_is_a_normalised_gaussian_per_frame():
    k = gaussian_kernel(2.0)
    assert len(k) == 13 and math.isclose(float(k.sum()), 1.0) and int(k.argmax()) == 6
    torch.testing.assert_close(k[7] / k[6], torch.tensor(math.exp(-1 / 8), dtype=torch.float64))
    x = torch.randn(2, 3, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert smooth_frames(x, 0.0) is x
    y = smooth_frames(x, 2.0)
    # interior pixel against the dense 2-D sum of the separable kernel; frames and channels never mix
    want = (x[1, 2, 3, 2:15, 1:14] * (k[:, None] * k[None, :])).sum()
    torch.testing.assert_close(y[1, 2, 3, 8, 7], want)
    const = torch.full((1, 3, 2, 16, 16), 0.3)
    torch.testing.assert_close(smooth_frames(const, 1.5), const)  # reflected edges keep a constant field
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0  # the highest frequency
    out = smooth_frames(checker.expand(1, 1, 1, 16, 16).contiguous(), 1.0)
    assert float(out.abs().max()) < 0.01


def test_guidance_blur_smooths_the_hook_gradient_and_checks_its_value():
    init, t = torch.rand(1, 3, 4, 8, 8) - 0.5, torch.tensor([5])
    out = {"pred_xstart": None}
    grads = []
    for blur in (0.0, 1.0):
        g, _, _ = _guidance(grad_blur=blur)  # the range term makes the gradient vary from pixel to pixel
        cond = g.prepare(torch.rand(1, 4 * 1600, generator=torch.Generator().manual_seed(3)) - 0.5, ["a red circle"],
                         48000, n_frames=4)
        x = init.clone().requires_grad_()
        out["pred_xstart"] = 3.0 * x  # partly outside [-0.5, 0.5]
        grads.append(g.cond_fn(cond)(x, t, out))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], smooth_frames(grads[0], 1.0))
    assert not torch.allclose(grads[0], grads[1])
    with pytest.raises(InputError, match="guidance_blur"):
        GuidanceConfig(grad_blur=-1.0)
    with pytest.raises(InputError, match="does not fit 4-px frames"):
        smooth_frames(torch.zeros(1, 3, 1, 4, 4), 2.0)
