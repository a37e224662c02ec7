"""Reverse-process samplers: ancestral DDPM, DDIM and DDIM inversion, as plain functions with one signature.

``sampler(net, schedule, shape, *, x_init, skip_timesteps, cond_fn, generators, model_kwargs, clip_denoised,
eta, progress, noise, device, dtype, known) -> x_0`` for ``sampler`` in :data:`SAMPLERS`.

- Steps run over the schedule's (respaced) indices ``num_timesteps - skip_timesteps - 1`` down to 0.
- Start: pure noise ``x_T`` of ``shape``; or, with ``x_init`` (SDEdit), ``q_sample(x_init, first index)`` —
  even with ``skip_timesteps=0``, as in blended-diffusion / TA2V.
- Randomness: ``generators`` is None (global RNG) or one ``torch.Generator`` per batch item, so sample i's
  noise depends neither on the batch size nor on the other samples. All noise comes from :func:`noise_like`.
- Guidance: ``cond_fn(x, t, out) -> grad``. ``x`` is the current sample with ``requires_grad``, ``t`` the
  respaced indices ``(B,)`` and ``out`` the :meth:`GaussianSchedule.p_mean_variance` dict computed on that
  same ``x`` with its graph, so the guidance can use ``out["pred_xstart"]`` without a second network call.
  It returns ∇_x log p(y | x) (the gradient of the negative guidance loss), ``x``'s shape. DDPM shifts the
  mean by variance·grad (Dhariwal & Nichol 2021, alg. 1); DDIM shifts ε by −√(1−ᾱ_t)·grad (alg. 2).
  Nothing of the graph survives a step.
- Known content: ``known = (x_known, mask)`` keeps the masked part of the sample on the forward process of
  ``x_known``: after every step the masked elements are replaced by ``q_sample(x_known, t−1)`` (by ``x_known``
  itself after the last step), with noise from the sample's generator (replacement conditioning, as RePaint
  without its resampling: Lugmayr et al. 2022). TIA2V uses it to hold the given first frame.

Source: guided-diffusion ``gaussian_diffusion.py`` (p_sample, ddim_sample, ddim_reverse_sample,
condition_mean, condition_score),
https://github.com/openai/guided-diffusion/blob/22e0df8183507e13a7813f8d38d51b072ca1e67c/guided_diffusion/gaussian_diffusion.py
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from tav.diffusion.schedule import GaussianSchedule, gather_coef
from tav.errors import InputError

CondFn = Callable[[Tensor, Tensor, dict], Tensor]


def noise_like(
    shape: Sequence[int],
    generators: Sequence[torch.Generator] | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> Tensor:
    """Standard normal noise of ``shape`` (``(B, ...)``) on ``device`` in ``dtype``.

    Drawn in float32 (so the values do not depend on the sampling dtype), from the global RNG on ``device``
    when ``generators`` is None, else item i from ``generators[i]`` on that generator's device.
    """
    shape = tuple(shape)
    if generators is None:
        return torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    if len(generators) != shape[0]:
        raise InputError(f"{len(generators)} generators for a batch of {shape[0]}: give one per batch item")
    draws = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32).to(device) for g in generators]
    return torch.stack(draws).to(dtype)


def _start(
    net: Callable, schedule: GaussianSchedule, shape: Sequence[int], x_init, skip_timesteps, generators, noise,
    device, dtype,
) -> tuple[Tensor, list[int]]:
    """The starting sample and the respaced indices to run, first to last."""
    shape = tuple(shape)
    if not 0 <= skip_timesteps < schedule.num_timesteps:
        raise InputError(
            f"skip_timesteps={skip_timesteps}: must be in [0, {schedule.num_timesteps}) for a "
            f"{schedule.num_timesteps}-step schedule"
        )
    for name, given in (("x_init", x_init), ("noise", noise)):
        if given is not None and tuple(given.shape) != shape:
            raise InputError(f"{name} of shape {tuple(given.shape)} does not match the sample shape {shape}")
    ref = x_init if x_init is not None else noise
    if device is None:
        device = ref.device if ref is not None else _net_device(net)
    if dtype is None:
        dtype = ref.dtype if ref is not None else torch.float32
    first = schedule.num_timesteps - skip_timesteps - 1
    start_t = int(schedule.timestep_map[first])
    if schedule.max_t and start_t >= schedule.max_t:
        lowest = schedule.num_timesteps - 1 - int((schedule.timestep_map < schedule.max_t).nonzero().max())
        raise InputError(f"the network learned t < {schedule.max_t} only (its process.max_t), but this chain starts "
                         f"at t = {start_t}: start below t = {schedule.max_t}, an SDEdit start from a given video "
                         f"(skip at least {lowest} of the {schedule.num_timesteps} respaced steps)")
    if noise is None:
        noise = noise_like(shape, generators, device, dtype)
    noise = noise.to(device, dtype)
    x = noise if x_init is None else schedule.q_sample(x_init.to(device, dtype), first, noise)
    return x, list(range(first, -1, -1))


Known = tuple[Tensor, Tensor]  # (x_known of the sample's shape, bool mask broadcastable to it)


def _impose(x: Tensor, known: Known | None, schedule: GaussianSchedule, i: int,
            generators: Sequence[torch.Generator] | None) -> Tensor:
    """After the step from index ``i``: the masked part of ``x`` set to ``q_sample(x_known, i - 1)``, or to
    ``x_known`` when ``i == 0``."""
    if known is None:
        return x
    x_known, mask = known
    x_known = x_known.to(x.device, x.dtype)
    if i > 0:
        x_known = schedule.q_sample(x_known, i - 1, noise_like(x.shape, generators, x.device, x.dtype))
    return torch.where(mask.to(x.device), x_known, x)


def _net_device(net: Callable) -> torch.device:
    """The device of ``net``'s first parameter (CPU for a parameter-free callable)."""
    if isinstance(net, nn.Module):
        param = next(net.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def _predict(
    net: Callable, schedule: GaussianSchedule, x: Tensor, t: Tensor, cond_fn: CondFn | None,
    clip_denoised: bool | float, model_kwargs: dict | None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """One network call at ``(x, t)``: the detached p_mean_variance dict and the guidance gradient (or None)."""
    if cond_fn is None:
        with torch.no_grad():
            return schedule.p_mean_variance(net, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs), None
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        out = schedule.p_mean_variance(net, x_in, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        grad = cond_fn(x_in, t, out)
    if grad.shape != x.shape:
        raise InputError(f"cond_fn returned a gradient of shape {tuple(grad.shape)}; expected {tuple(x.shape)}")
    return {k: v.detach() for k, v in out.items()}, grad.detach().to(x.dtype)


def ddpm_sample(
    net: Callable[..., Tensor],
    schedule: GaussianSchedule,
    shape: Sequence[int],
    *,
    x_init: Tensor | None = None,
    skip_timesteps: int = 0,
    cond_fn: CondFn | None = None,
    generators: Sequence[torch.Generator] | None = None,
    model_kwargs: dict | None = None,
    clip_denoised: bool | float = False,
    eta: float = 0.0,
    progress: bool = False,
    noise: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    known: Known | None = None,
) -> Tensor:
    """Ancestral sampling x_{t−1} ~ N(mean (+ variance·grad), variance), no noise at t = 0.

    Args:
        net: ``net(x, t, **model_kwargs)``; see :mod:`tav.diffusion.schedule`.
        schedule: the (respaced) process.
        shape: ``(B, C, ...)`` of the sample.
        x_init: ``shape``, the SDEdit input (e.g. a stage-1 video in [-0.5, 0.5]); None = start from noise.
        skip_timesteps: the number of most-noisy steps to skip.
        cond_fn: guidance, see the module docstring.
        generators: None or one ``torch.Generator`` per batch item.
        model_kwargs: extra keyword arguments of ``net`` (conditions).
        clip_denoised: clamp the predicted x_0: True = [-1, 1] (upstream), a number c = [-c, c]; off by default.
        eta: ignored (DDPM is the η = 1 end of DDIM); accepted so all samplers share one signature.
        progress: show a tqdm bar over the steps.
        noise: ``shape``, the starting noise instead of a fresh draw (x_T, or the SDEdit noise with x_init).
        device, dtype: of the sample; default that of ``x_init`` / ``noise``, else the device of ``net``'s first
            parameter (CPU without one) and float32.
        known: ``(x_known, mask)``: the masked part follows ``x_known``'s forward process (module docstring).
    Returns:
        ``shape``, the final sample x_0 (which, unguided, equals the last step's predicted x_0).
    """
    x, steps = _start(net, schedule, shape, x_init, skip_timesteps, generators, noise, device, dtype)
    for i in tqdm(steps, disable=not progress, desc="ddpm", leave=False):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        out, grad = _predict(net, schedule, x, t, cond_fn, clip_denoised, model_kwargs)
        mean = out["mean"] if grad is None else out["mean"] + out["variance"] * grad
        if i > 0:
            mean = mean + torch.exp(0.5 * out["log_variance"]) * noise_like(x.shape, generators, x.device, x.dtype)
        x = _impose(mean.to(x.dtype), known, schedule, i, generators)
    return x


def ddim_sample(
    net: Callable[..., Tensor],
    schedule: GaussianSchedule,
    shape: Sequence[int],
    *,
    x_init: Tensor | None = None,
    skip_timesteps: int = 0,
    cond_fn: CondFn | None = None,
    generators: Sequence[torch.Generator] | None = None,
    model_kwargs: dict | None = None,
    clip_denoised: bool | float = False,
    eta: float = 0.0,
    progress: bool = False,
    noise: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    known: Known | None = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021) with stochasticity ``eta`` (0: deterministic once x_T is fixed; the
    loop then draws no noise at all). Arguments and return value as :func:`ddpm_sample`."""
    x, steps = _start(net, schedule, shape, x_init, skip_timesteps, generators, noise, device, dtype)
    for i in tqdm(steps, disable=not progress, desc="ddim", leave=False):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        out, grad = _predict(net, schedule, x, t, cond_fn, clip_denoised, model_kwargs)
        eps, pred_xstart = out["eps"], out["pred_xstart"]
        alpha_bar = gather_coef(schedule.alphas_cumprod, t, x)
        if grad is not None:  # score conditioning: ε ← ε − √(1−ᾱ_t)·∇ log p(y|x)
            eps = eps - (1 - alpha_bar).sqrt() * grad
            pred_xstart = schedule.predict_xstart_from_eps(x, t, eps)
        alpha_bar_prev = gather_coef(schedule.alphas_cumprod_prev, t, x)
        # Song et al. 2021 eq. 12 with σ_t(η) of eq. 16, https://arxiv.org/abs/2010.02502
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
        x_next = alpha_bar_prev.sqrt() * pred_xstart + (1 - alpha_bar_prev - sigma.square()).sqrt() * eps
        if eta > 0 and i > 0:
            x_next = x_next + sigma * noise_like(x.shape, generators, x.device, x.dtype)
        x = _impose(x_next.to(x.dtype), known, schedule, i, generators)
    return x


def ddim_reverse(
    net: Callable[..., Tensor],
    schedule: GaussianSchedule,
    x0: Tensor,
    *,
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> Tensor:
    """Deterministic DDIM inversion (η = 0): run the ODE from ``x0`` (``(B, C, ...)``, treated as step 0) up
    through every step of ``schedule``; returns the latent x_T of ``x0``'s shape. Sampling it with
    :func:`ddim_sample` (``noise=x_T``) approximately reconstructs ``x0``."""
    x = x0
    for i in tqdm(range(schedule.num_timesteps), disable=not progress, desc="ddim-reverse", leave=False):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = schedule.p_mean_variance(net, x, t, model_kwargs=model_kwargs)
        alpha_bar_next = gather_coef(schedule.alphas_cumprod_next, t, x)
        x = (alpha_bar_next.sqrt() * out["pred_xstart"] + (1 - alpha_bar_next).sqrt() * out["eps"]).to(x0.dtype)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}
