"""The Gaussian diffusion process and its samplers (tav.diffusion.schedule / losses / samplers) with analytic
stand-in networks: schedule values, respacing ids, the VB term against closed forms, sampler determinism,
per-sample generators, guidance and SDEdit starts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tav.diffusion.losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood
from tav.diffusion.samplers import SAMPLERS, ddim_reverse, ddim_sample, ddpm_sample, noise_like
from tav.diffusion.schedule import GaussianSchedule, ProcessConfig, betas_for, space_timesteps
from tav.errors import InputError

SHAPE = (2, 3, 4, 4)


def _alpha_bar_closed(s: np.ndarray, steps: int) -> np.ndarray:
    return np.cos((s / steps + 0.008) / 1.008 * math.pi / 2) ** 2


class GaussEps:
    """Exact ε-prediction for data x_0 ~ N(0, std²·I): E[ε | x_t] = √(1−ᾱ)·x_t/(ᾱ·std² + 1 − ᾱ).

    It reads ᾱ from the ORIGINAL schedule ``base`` at the step it decodes from the rescaled t it receives, so it
    also checks what the samplers pass to the network. Counts calls and records the inputs.
    """

    def __init__(self, base: GaussianSchedule, std: float = 0.5, learn_sigma: bool = False):
        self.ac, self.steps, self.std, self.learn_sigma = base.alphas_cumprod, base.num_timesteps, std, learn_sigma
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t):
        self.calls.append((x.detach().clone(), t.clone()))
        step = torch.round(t.double() * self.steps / 1000).long()
        ab = self.ac[step].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = (1 - ab).sqrt() * x / (ab * self.std**2 + 1 - ab)
        return torch.cat([eps, torch.zeros_like(eps)], 1) if self.learn_sigma else eps


class AffineNet(nn.Module):
    """Learned-sigma stand-in: ε̂ = a·x_t, v = tanh(b) (a only affects the ε half, b only the v half)."""

    def __init__(self, a: float = 0.7, b: float = 0.3):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x, t):
        return torch.cat([self.a * x, torch.tanh(self.b).expand_as(x)], 1)


def _generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- schedule values ---------------------------------------------------------------------------------------


def test_cosine_alphas_cumprod_matches_closed_form():
    steps = 1000
    betas = betas_for("cosine", steps)
    assert betas.dtype == np.float64 and betas.shape == (steps,)
    ac = np.cumprod(1 - betas)
    closed = _alpha_bar_closed(np.arange(1, steps + 1), steps) / _alpha_bar_closed(np.zeros(1), steps)
    unclipped = betas < 0.999
    assert unclipped.sum() == steps - 1 and betas[-1] == 0.999  # only the last beta is clipped
    np.testing.assert_allclose(ac[unclipped], closed[unclipped], rtol=1e-10)
    assert np.all(np.diff(ac) < 0)


def test_linear_betas_endpoints():
    betas = betas_for("linear", 4000)
    assert betas.shape == (4000,)
    assert betas[0] == pytest.approx(1e-4 * 0.25, rel=1e-12) and betas[-1] == pytest.approx(0.02 * 0.25, rel=1e-12)
    assert np.all(np.diff(betas) > 0)


def test_q_sample_at_zero_and_dtypes():
    s = GaussianSchedule.from_config(ProcessConfig())
    ac0 = float(s.alphas_cumprod[0])
    assert 1 - ac0 < 1e-4
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = s.q_sample(x0, 0, noise=torch.zeros_like(x0))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor(math.sqrt(ac0), dtype=torch.float32) * x0)
    noisy = s.q_sample(x0, 0, noise=torch.ones_like(x0))
    assert torch.allclose(noisy - out, torch.full_like(x0, math.sqrt(1 - ac0)), rtol=0, atol=1e-6)
    assert s.q_sample(x0.bfloat16(), torch.tensor([5, 3999])).dtype == torch.bfloat16


def test_posterior_variance_formula():
    s = GaussianSchedule(betas_for("linear", 50))
    t = torch.tensor([0, 1, 49])
    _, var, logvar = s.q_posterior(torch.zeros(3, 1), torch.zeros(3, 1), t)
    ac, b = s.alphas_cumprod.numpy(), s.betas.numpy()
    expected = [0.0, b[1] * (1 - ac[0]) / (1 - ac[1]), b[49] * (1 - ac[48]) / (1 - ac[49])]
    np.testing.assert_allclose(var.squeeze(1).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(logvar.squeeze(1).numpy(), np.log([expected[1], expected[1], expected[2]]), rtol=1e-5)


def test_config_validation_names_the_field():
    for kwargs, field in [({"noise_schedule": "quad"}, "noise_schedule"), ({"loss": "l1"}, "loss"),
                          ({"steps": 0}, "steps"), ({"learn_sigma": 1}, "learn_sigma")]:
        with pytest.raises(InputError, match=field):
            ProcessConfig(**kwargs)


# -- respacing -----------------------------------------------------------------------------------------------


def test_space_timesteps_100_of_4000():
    kept = space_timesteps(4000, "100")
    stride = 3999 / 99
    assert kept == [int(math.floor(i * stride + 0.5)) for i in range(100)]
    assert kept[:6] == [0, 40, 81, 121, 162, 202] and kept[-1] == 3999 and len(kept) == 100


def test_space_timesteps_ddim_and_sections():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]  # sections 0-4 (stride 4) and 5-9 (stride 2)
    assert space_timesteps(10, [2, 3]) == [0, 4, 5, 7, 9]
    with pytest.raises(InputError, match="ddim7"):
        space_timesteps(10, "ddim7")
    with pytest.raises(InputError, match="cannot keep"):
        space_timesteps(10, "6,1")


def test_respaced_schedule_and_net_timesteps():
    cfg = ProcessConfig()
    base = GaussianSchedule.from_config(cfg)
    s = GaussianSchedule.from_config(cfg, "100")
    kept = torch.tensor(space_timesteps(4000, "100"))
    assert s.num_timesteps == 100 and s.original_steps == 4000 and torch.equal(s.timestep_map, kept)
    torch.testing.assert_close(s.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-9, atol=1e-15)
    idx = torch.tensor([0, 1, 74, 99])
    torch.testing.assert_close(s.net_timesteps(idx), kept[idx].float() * 0.25)
    assert s.net_timesteps(idx).dtype == torch.float32
    plain = GaussianSchedule.from_config(ProcessConfig(rescale_timesteps=False), "100")
    torch.testing.assert_close(plain.net_timesteps(idx), kept[idx].float())
    twice = s.respaced("10")  # respacing a respaced schedule keeps pointing at the original steps
    torch.testing.assert_close(twice.alphas_cumprod, base.alphas_cumprod[twice.timestep_map], rtol=1e-9, atol=1e-15)
    assert GaussianSchedule.from_config(cfg, "").num_timesteps == 4000


# -- reverse-step distribution and losses --------------------------------------------------------------------


def test_learned_range_endpoints():
    s = GaussianSchedule(betas_for("cosine", 50))
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 30])
    for v, expected in [(-1.0, s.posterior_log_variance_clipped[t].exp()), (1.0, s.betas[t])]:
        out = s.p_mean_variance(lambda x_, t_, v=v: torch.cat([x_, torch.full_like(x_, v)], 1), x, t)
        torch.testing.assert_close(out["variance"], expected.view(-1, 1, 1).expand_as(x), rtol=1e-12, atol=0)
    assert float(s.posterior_log_variance_clipped[0]) == float(s.posterior_log_variance_clipped[1])


def _kl_bits_by_hand(x0, x_t, t, s, net):
    """Closed-form KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) in bits, averaged over elements, for AffineNet."""
    ab, ab_prev, beta = (float(v[t]) for v in (s.alphas_cumprod, s.alphas_cumprod_prev, s.betas))
    eps_hat = float(net.a.detach()) * x_t
    x0_hat = (x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
    c1, c2 = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
    var_q = beta * (1 - ab_prev) / (1 - ab)
    if t == 0:  # β̃_0 = 0: the learned range's lower end is the clipped value β̃_1
        var_q = float(s.posterior_variance[1])
    frac = (math.tanh(float(net.b.detach())) + 1) / 2
    var_p = math.exp(frac * math.log(beta) + (1 - frac) * math.log(var_q))
    diff = (c1 * x0 + c2 * x_t) - (c1 * x0_hat + c2 * x_t)
    kl = math.log(math.sqrt(var_p / var_q)) + (var_q + diff**2) / (2 * var_p) - 0.5
    return kl.mean() / math.log(2), c1 * x0_hat + c2 * x_t, var_p


def test_vb_term_equals_analytic_kl_and_nll():
    s = GaussianSchedule(betas_for("cosine", 100), loss="mse")
    net = AffineNet()
    g = torch.Generator().manual_seed(1)
    x0 = 0.5 * torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) - 0.25
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([37, 0])
    terms = {k: v.detach() for k, v in s.training_losses(net, x0, t, noise=noise).items()}
    x_t = s.q_sample(x0, t, noise)
    kl, _, _ = _kl_bits_by_hand(x0[0].numpy(), x_t[0].detach().numpy(), 37, s, net)
    assert float(terms["vb"][0]) == pytest.approx(float(kl), rel=1e-9)
    # t = 0: the discretised NLL of x_0 under N(μ_p, σ_p²)
    _, mean_p, var_p = _kl_bits_by_hand(x0[1].numpy(), x_t[1].detach().numpy(), 0, s, net)
    nll = -discretized_gaussian_log_likelihood(x0[1], torch.from_numpy(mean_p), torch.tensor(0.5 * math.log(var_p)))
    assert float(terms["vb"][1]) == pytest.approx(float(nll.mean()) / math.log(2), rel=1e-7)
    # the mse term, and the hybrid total
    eps_hat = float(net.a.detach()) * x_t
    torch.testing.assert_close(terms["mse"], ((eps_hat - noise) ** 2).mean(dim=(1, 2, 3)).detach())
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    rescaled = GaussianSchedule(betas_for("cosine", 100), loss="rescaled_mse").training_losses(net, x0, t, noise)
    torch.testing.assert_close(rescaled["vb"], terms["vb"] * 0.1)


def test_vb_gradient_reaches_only_the_variance():
    s = GaussianSchedule(betas_for("cosine", 100))
    net = AffineNet()
    x0 = 0.2 * torch.randn(4, 3, 4, 4, dtype=torch.float64)
    terms = s.training_losses(net, x0, torch.tensor([5, 20, 60, 99]))
    terms["vb"].sum().backward()
    assert net.a.grad is None or float(net.a.grad) == 0.0
    assert float(net.b.grad) != 0.0
    net.zero_grad()
    s.training_losses(net, x0, torch.tensor([5, 20, 60, 99]))["mse"].sum().backward()
    assert float(net.a.grad) != 0.0


def test_mse_fixed_variance_and_predict_xstart():
    x0 = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    t = torch.tensor([3, 17])
    s = GaussianSchedule(betas_for("linear", 20), learn_sigma=False)
    terms = s.training_losses(lambda x, t_: 0.5 * x, x0, t, noise=noise)
    x_t = s.q_sample(x0, t, noise)
    torch.testing.assert_close(terms["mse"], ((0.5 * x_t - noise) ** 2).mean(dim=(1, 2, 3)))
    assert set(terms) == {"mse", "loss"}
    sx = GaussianSchedule(betas_for("linear", 20), learn_sigma=False, predict_xstart=True)
    terms = sx.training_losses(lambda x, t_: 0.5 * x, x0, t, noise=noise)
    torch.testing.assert_close(terms["mse"], ((0.5 * x_t - x0) ** 2).mean(dim=(1, 2, 3)))


def test_training_losses_noised_from_another_picture():
    """``x_src``: x_t is noised from it, and the ε target is the one that gives back x0 from that x_t; rows where
    x_src equals x0 keep the drawn noise as the target exactly (the loss of plain training)."""
    s = GaussianSchedule(betas_for("cosine", 100), learn_sigma=False)
    g = torch.Generator().manual_seed(2)
    x0, src, noise = (torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    src[2] = x0[2]
    t = torch.tensor([0, 40, 99])
    seen = {}

    def net(x, t_):
        seen["x_t"] = x
        return torch.zeros_like(x)

    terms = s.training_losses(net, x0, t, noise=noise, x_src=src)
    torch.testing.assert_close(seen["x_t"], s.q_sample(src, t, noise))
    eps = s.predict_eps_from_xstart(seen["x_t"], t, x0)  # the zero prediction's loss is the target's square
    torch.testing.assert_close(terms["mse"], eps.square().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(s.predict_xstart_from_eps(seen["x_t"], t, eps), x0)
    plain = s.training_losses(net, x0, t, noise=noise)
    assert float(terms["mse"][2]) == float(plain["mse"][2]) and float(terms["mse"][1]) != float(plain["mse"][1])


def test_sample_timesteps_uniform_and_seeded():
    s = GaussianSchedule(betas_for("cosine", 10))
    a = s.sample_timesteps(500, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(a, s.sample_timesteps(500, "cpu", torch.Generator().manual_seed(0)))
    assert a.dtype == torch.long and a.shape == (500,) and int(a.min()) == 0 and int(a.max()) == 9


def test_max_t_limits_training_draws_and_sampling_starts():
    cfg = ProcessConfig(steps=20, max_t=6)
    base = GaussianSchedule.from_config(cfg)
    t = base.sample_timesteps(500, "cpu", torch.Generator().manual_seed(0))
    assert int(t.min()) == 0 and int(t.max()) == 5  # [0, max_t)
    spaced = GaussianSchedule.from_config(cfg, respacing="10")  # original steps 0, 2, ..., 18
    assert spaced.max_t == 6 and spaced.timestep_map.tolist()[:4] == [0, 2, 4, 6]
    assert int(spaced.sample_timesteps(200, "cpu", torch.Generator().manual_seed(0)).max()) == 2  # steps 0, 2, 4
    net = GaussEps(spaced, learn_sigma=True)
    x_init = 0.3 * torch.randn(SHAPE)
    out = ddpm_sample(net, spaced, SHAPE, x_init=x_init, skip_timesteps=7, generators=_generators(4, 5))
    assert out.shape == SHAPE and len(net.calls) == 3  # starts at original step 4 < 6
    for sampler in (ddpm_sample, ddim_sample):
        with pytest.raises(InputError, match=r"t < 6 only.*at t = 6: start below t = 6.*skip at least 7 of the 10"):
            sampler(net, spaced, SHAPE, x_init=x_init, skip_timesteps=6)
    for bad in (-1, 21, 2.5, True):
        with pytest.raises(InputError, match="max_t"):
            ProcessConfig(steps=20, max_t=bad)


def test_coefficients_follow_the_input_dtype():
    s = GaussianSchedule(betas_for("cosine", 50))
    x = torch.randn(2, 3, 4)
    out = s.p_mean_variance(lambda x_, t_: torch.cat([x_, torch.zeros_like(x_)], 1), x, torch.tensor([0, 49]))
    assert all(v.dtype == torch.float32 for v in out.values())
    assert s.alphas_cumprod.dtype == torch.float64
    with pytest.raises(InputError, match="learn_sigma"):
        s.p_mean_variance(lambda x_, t_: x_, x, 3)


def test_approx_cdf_close_to_erf():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    assert float((approx_standard_normal_cdf(x) - exact).abs().max()) < 5e-4


# -- samplers ------------------------------------------------------------------------------------------------


def test_ddim_deterministic_and_draws_no_step_noise():
    base = GaussianSchedule(betas_for("cosine", 200), learn_sigma=False)
    s = base.respaced("ddim20")
    net = GaussEps(base)
    outs = []
    for _ in range(2):
        gens = _generators(7, 8)
        outs.append(ddim_sample(net, s, SHAPE, generators=gens))
        after = [g.get_state() for g in gens]
        ref = _generators(7, 8)
        noise_like(SHAPE, ref, "cpu", torch.float32)  # only the starting noise was drawn
        assert all(torch.equal(a, r.get_state()) for a, r in zip(after, ref, strict=True))
    assert torch.equal(outs[0], outs[1])
    x_t = noise_like(SHAPE, _generators(7, 8), "cpu", torch.float32)
    assert torch.equal(ddim_sample(net, s, SHAPE, noise=x_t, generators=_generators(1, 2)), outs[0])
    assert not torch.equal(ddim_sample(net, s, SHAPE, generators=_generators(7, 8), eta=1.0), outs[0])


def test_ddim_reverse_then_sample_reconstructs():
    """Inversion is first-order accurate: the round-trip error is small and shrinks ~1/steps."""
    base = GaussianSchedule(betas_for("cosine", 1000), learn_sigma=False)
    x0 = 0.5 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errors = []
    for respacing in ("ddim100", ""):
        s = base.respaced(respacing) if respacing else base
        net = GaussEps(base, std=0.5)
        x_t = ddim_reverse(net, s, x0)
        assert len(net.calls) == s.num_timesteps
        assert float(x_t.std()) == pytest.approx(1.0, abs=0.25)  # the latent looks like unit noise
        rec = ddim_sample(net, s, SHAPE, noise=x_t)
        assert rec.dtype == torch.float64
        errors.append(float((rec - x0).abs().max()))
    assert errors[1] < 0.01 and errors[1] < errors[0] / 5, errors


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_samples_follow_the_data_distribution(name):
    """With the exact ε of N(0, 0.5²) data, both samplers return values with that mean and spread."""
    base = GaussianSchedule(betas_for("cosine", 1000), learn_sigma=True)
    net = GaussEps(base, learn_sigma=True)
    x = SAMPLERS[name](net, base.respaced("200"), (1, 1, 64, 64), generators=_generators(0))
    assert abs(float(x.mean())) < 0.03 and float(x.std()) == pytest.approx(0.5, abs=0.03)


def test_per_sample_generators_batch_independent():
    base = GaussianSchedule(betas_for("cosine", 30))
    net = GaussEps(base, learn_sigma=True)
    both = ddpm_sample(net, base, SHAPE, generators=_generators(10, 11))
    alone = ddpm_sample(net, base, (1, *SHAPE[1:]), generators=_generators(10))
    second = ddpm_sample(net, base, (1, *SHAPE[1:]), generators=_generators(11))
    torch.testing.assert_close(both[:1], alone, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(both[1:], second, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(both[0], both[1])


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_guidance_pulls_toward_target_one_call_per_step(name):
    base = GaussianSchedule(betas_for("cosine", 40), learn_sigma=False)
    target = torch.full(SHAPE, 0.4)
    seen = []

    def cond_fn(x, t, out):
        assert x.requires_grad and out["pred_xstart"].requires_grad
        seen.append(t.clone())
        loss = (out["pred_xstart"] - target).square().sum()
        return -5.0 * torch.autograd.grad(loss, x)[0]

    plain_net, guided_net = GaussEps(base), GaussEps(base)
    plain = SAMPLERS[name](plain_net, base, SHAPE, generators=_generators(0, 1))
    guided = SAMPLERS[name](guided_net, base, SHAPE, generators=_generators(0, 1), cond_fn=cond_fn)
    assert not guided.requires_grad
    assert len(guided_net.calls) == len(plain_net.calls) == 40
    assert [int(t[0]) for t in seen] == list(range(39, -1, -1))
    assert float((guided - target).norm()) < 0.5 * float((plain - target).norm())


def test_skip_timesteps_starts_from_q_sample():
    base = GaussianSchedule(betas_for("cosine", 20))
    net = GaussEps(base, learn_sigma=True)
    x_init = 0.3 * torch.randn(SHAPE)
    out = ddpm_sample(net, base, SHAPE, x_init=x_init, skip_timesteps=5, generators=_generators(4, 5))
    assert out.shape == SHAPE and len(net.calls) == 15
    expected = base.q_sample(x_init, 14, noise_like(SHAPE, _generators(4, 5), "cpu", torch.float32))
    torch.testing.assert_close(net.calls[0][0], expected, rtol=0, atol=0)
    torch.testing.assert_close(net.calls[0][1], torch.full((2,), 14 * 1000 / 20))
    torch.testing.assert_close(net.calls[-1][1], torch.zeros(2))
    for bad in (20, -1):
        with pytest.raises(InputError, match="skip_timesteps"):
            ddpm_sample(net, base, SHAPE, x_init=x_init, skip_timesteps=bad)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_known_region_follows_the_forward_process(name):
    """``known = (x_known, mask)``: the masked part ends exactly at x_known; before every later network call it is
    q_sample(x_known, t) with the sample's own noise; the unmasked part is sampled as without it (the test network
    works per element, and DDIM at eta 0 draws no step noise that the replacement could shift)."""
    base = GaussianSchedule(betas_for("cosine", 20), learn_sigma=False)
    net = GaussEps(base)
    x_known = torch.linspace(-0.4, 0.4, math.prod(SHAPE)).view(SHAPE)
    mask = torch.zeros(1, 3, 1, 1, dtype=torch.bool)
    mask[:, 0] = True  # channel 0 known
    out = SAMPLERS[name](net, base, SHAPE, generators=_generators(2, 3), known=(x_known, mask))
    assert torch.equal(out[:, 0], x_known[:, 0])  # the last replacement is x_known itself
    if name == "ddim":
        free = SAMPLERS[name](GaussEps(base), base, SHAPE, generators=_generators(2, 3))
        torch.testing.assert_close(out[:, 1:], free[:, 1:], rtol=0, atol=0)
    # the input of the second call holds the forward process of x_known at that step (t = 18)
    x1 = net.calls[1][0][:, 0]
    ab = float(base.alphas_cumprod[18])
    residual = (x1 - math.sqrt(ab) * x_known[:, 0]) / math.sqrt(1 - ab)  # the noise used: N(0, 1)
    assert abs(float(residual.mean())) < 0.5 and 0.3 < float(residual.std()) < 2.0
    again = SAMPLERS[name](GaussEps(base), base, SHAPE, generators=_generators(2, 3), known=(x_known, mask))
    assert torch.equal(again, out)  # seeded: the replacement noise comes from the sample's generator
