"""The Gaussian diffusion process: betas, respacing, q(x_t | x_0), the
posterior, the learned-range variance and the training loss. One implementation shared by TA2V and TIA2V.

The network is any callable ``net(x, t, **model_kwargs) -> out``:
- ``x``: ``(B, C, ...)``; ``t``: ``(B,)`` float, as returned by :meth:`GaussianSchedule.net_timesteps`;
- ``out``: ``(B, C, ...)`` with a fixed variance, ``(B, 2C, ...)`` with ``learn_sigma``: ε (or x_0 with
  ``predict_xstart``), then v ∈ [-1, 1], which interpolates the log-variance between the clipped posterior
  variance (v = -1) and β_t (v = +1).

Index convention: every ``t`` given to a :class:`GaussianSchedule` method is the schedule's own step index
(the *respaced* index after :meth:`GaussianSchedule.respaced`), a LongTensor ``(B,)`` or a Python int.
:meth:`GaussianSchedule.net_timesteps` is the only place that maps it to what the network sees.

Coefficients are kept as float64 CPU tensors; each gather casts them to the input's dtype and device, so the
same schedule serves fp32/bf16 inputs on any device.

Source: Ho et al. 2020; Nichol & Dhariwal 2021 (cosine schedule, learned range, hybrid loss, respacing);
guided-diffusion ``gaussian_diffusion.py`` and ``respace.py``
(https://github.com/openai/guided-diffusion/blob/22e0df8183507e13a7813f8d38d51b072ca1e67c/guided_diffusion/).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tav.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from tav.errors import InputError

NOISE_SCHEDULES = ("cosine", "linear")
LOSSES = ("mse", "rescaled_mse", "kl")
_COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal eq. 17
_MAX_BETA = 0.999  # cosine betas are clipped here to avoid a singularity at t = T


@dataclass
class ProcessConfig:
    """Settings of the diffusion process (not of the network)."""

    steps: int = 4000  # diffusion steps T used in training
    noise_schedule: str = "cosine"  # "cosine" | "linear"
    learn_sigma: bool = True  # the network outputs 2C channels: ε (or x_0), then v ∈ [-1, 1]
    predict_xstart: bool = False  # the first half predicts x_0 instead of ε
    loss: str = "mse"  # "mse": MSE + VB (TA2V) | "rescaled_mse": MSE + VB·steps/1000 (TIA2V) | "kl": VB only
    rescale_timesteps: bool = True  # the network sees t·1000/steps (original step numbering)
    # > 0: the network learns only t < max_t (training draws t there; samplers refuse to start higher): a model
    # sampled only from an SDEdit start below max_t, as SDXL's refiner (t < 200 of 1000). 0: the whole chain
    max_t: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise InputError(f"ProcessConfig.steps={self.steps!r}: must be an integer >= 2")
        if isinstance(self.max_t, bool) or not isinstance(self.max_t, int) or not 0 <= self.max_t <= self.steps:
            raise InputError(f"ProcessConfig.max_t={self.max_t!r}: must be an integer in [0, steps={self.steps}] "
                             "(0: the whole chain)")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise InputError(f"ProcessConfig.noise_schedule={self.noise_schedule!r}: must be one of {NOISE_SCHEDULES}")
        if self.loss not in LOSSES:
            raise InputError(f"ProcessConfig.loss={self.loss!r}: must be one of {LOSSES}")
        for name in ("learn_sigma", "predict_xstart", "rescale_timesteps"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"ProcessConfig.{name}={getattr(self, name)!r}: must be True or False")


def betas_for(name: str, steps: int) -> np.ndarray:
    """The ``(steps,)`` float64 betas of the ``"cosine"`` or ``"linear"`` schedule.

    cosine: β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999) with ᾱ(s) = cos²((s/T + 0.008)/1.008 · π/2)
    (Nichol & Dhariwal 2021, eq. 17). linear: Ho et al.'s 1e-4 … 0.02 for T = 1000, scaled by 1000/T.
    """
    if steps < 1:
        raise InputError(f"steps={steps}: a noise schedule needs at least one step")
    if name == "cosine":
        s = np.arange(steps + 1, dtype=np.float64) / steps
        alpha_bar = np.cos((s + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
        return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], _MAX_BETA)
    if name == "linear":
        scale = 1000.0 / steps
        if 0.02 * scale > 1.0:
            raise InputError(f"steps={steps}: the linear schedule needs at least 20 steps (its last beta is 20/steps)")
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    raise InputError(f"noise_schedule={name!r}: must be one of {NOISE_SCHEDULES}")


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """The sorted steps kept when respacing a ``num_timesteps`` process (guided-diffusion's rule).

    - ``"ddimN"``: the smallest integer stride whose ``range(0, num_timesteps, stride)`` has exactly N steps.
    - otherwise (``"10,15,20"`` or a list of ints): the steps are cut into as many equal sections as counts
      (the first ``num_timesteps % len`` sections one step longer); section i keeps ``counts[i]`` steps at a
      fractional stride (size − 1)/(count − 1) from its start, each rounded to the nearest integer.
      E.g. ``space_timesteps(4000, "100")`` keeps 0, 40, 81, 121, 162, …, 3999.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_steps(num_timesteps, section_counts)
        try:
            section_counts = [int(c) for c in section_counts.split(",")]
        except ValueError:
            raise InputError(
                f"timestep respacing {section_counts!r}: expected 'ddimN' or comma-separated integers"
            ) from None
    counts = list(section_counts)
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise InputError(f"timestep respacing {counts}: needs non-negative counts with a positive total")
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise InputError(f"timestep respacing: cannot keep {count} steps of a section of {size} steps")
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        position = 0.0
        for _ in range(count):  # accumulated float position, as upstream, so the rounding matches exactly
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _ddim_steps(num_timesteps: int, spec: str) -> list[int]:
    """``"ddimN"``: a uniform integer stride giving exactly N steps."""
    try:
        wanted = int(spec[len("ddim"):])
    except ValueError:
        raise InputError(f"timestep respacing {spec!r}: expected 'ddim' followed by an integer") from None
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == wanted:
            return list(range(0, num_timesteps, stride))
    raise InputError(f"timestep respacing {spec!r}: no integer stride gives exactly {wanted} of {num_timesteps} steps")


def gather_coef(coef: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``coef[t]`` as ``(B, 1, ..., 1)`` in ``like``'s dtype and device (float64 maths, cast on gather)."""
    values = coef[t.detach().to("cpu", torch.long)].to(like.dtype).to(like.device)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class GaussianSchedule:
    """A discrete Gaussian diffusion process with ``num_timesteps`` steps (see the module docstring).

    Args:
        betas: ``(T,)`` noise variances in (0, 1].
        learn_sigma: the network's output has 2C channels (learned-range variance); else the variance is the
            posterior variance β̃_t (guided-diffusion's FIXED_SMALL).
        predict_xstart: the network predicts x_0 instead of ε.
        loss: ``"mse"``, ``"rescaled_mse"`` or ``"kl"`` (see :class:`ProcessConfig`).
        rescale_timesteps: the network sees ``original_step · 1000 / original_steps``.
        timestep_map: ``(T,)`` original step of each index (identity without respacing).
        original_steps: the number of steps of the unrespaced process (``T`` without respacing).
    """

    def __init__(
        self,
        betas: np.ndarray | Tensor | Sequence[float],
        *,
        learn_sigma: bool = True,
        predict_xstart: bool = False,
        loss: str = "mse",
        rescale_timesteps: bool = True,
        timestep_map: Sequence[int] | Tensor | None = None,
        original_steps: int | None = None,
        max_t: int = 0,
    ) -> None:
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        if betas.ndim != 1 or len(betas) == 0 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise InputError("GaussianSchedule: betas must be a non-empty 1-D array with values in (0, 1]")
        if loss not in LOSSES:
            raise InputError(f"GaussianSchedule: loss={loss!r} must be one of {LOSSES}")
        self.num_timesteps = len(betas)
        self.learn_sigma, self.predict_xstart = learn_sigma, predict_xstart
        self.loss, self.rescale_timesteps = loss, rescale_timesteps
        self.original_steps = self.num_timesteps if original_steps is None else int(original_steps)
        self.max_t = int(max_t)  # > 0: the network learned original steps t < max_t only (ProcessConfig.max_t)
        mapping = range(self.num_timesteps) if timestep_map is None else timestep_map
        self.timestep_map = torch.as_tensor(mapping, dtype=torch.long).clone()
        if self.timestep_map.shape != (self.num_timesteps,):
            raise InputError(f"GaussianSchedule: timestep_map needs {self.num_timesteps} entries, one per beta")
        self._set_coefficients(betas)

    def _set_coefficients(self, betas: Tensor) -> None:
        """Every per-step coefficient, float64 ``(T,)`` tensors on the CPU."""
        self.betas = betas
        self.log_betas = torch.log(betas)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        self.alphas_cumprod_next = torch.cat([ac[1:], ac.new_zeros(1)])
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = ac.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        # posterior q(x_{t-1} | x_t, x_0) = N(coef1·x_0 + coef2·x_t, β̃_t), Ho et al. 2020 eqs. 6-7
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)
        # β̃_0 = 0, so its log is replaced by log β̃_1 (log β_0 for a one-step process)
        floor = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([floor, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - ac)

    @classmethod
    def from_config(cls, cfg: ProcessConfig, respacing: str | Sequence[int] | None = None) -> GaussianSchedule:
        """The schedule of ``cfg``, respaced by ``respacing`` (see :func:`space_timesteps`; None or "" = none)."""
        schedule = cls(
            betas_for(cfg.noise_schedule, cfg.steps),
            learn_sigma=cfg.learn_sigma,
            predict_xstart=cfg.predict_xstart,
            loss=cfg.loss,
            rescale_timesteps=cfg.rescale_timesteps,
            max_t=cfg.max_t,
        )
        return schedule.respaced(respacing) if respacing else schedule

    def respaced(self, section_counts: str | Sequence[int]) -> GaussianSchedule:
        """A schedule over a subset of this one's steps with the same ᾱ there: β_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}}.

        ``timestep_map`` goes on pointing at the original steps, so the network sees the same t as in training.
        """
        kept = torch.tensor(space_timesteps(self.num_timesteps, section_counts), dtype=torch.long)
        ac = self.alphas_cumprod[kept]
        betas = 1.0 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
        return GaussianSchedule(
            betas,
            learn_sigma=self.learn_sigma,
            predict_xstart=self.predict_xstart,
            loss=self.loss,
            rescale_timesteps=self.rescale_timesteps,
            timestep_map=self.timestep_map[kept],
            original_steps=self.original_steps,
            max_t=self.max_t,
        )

    # -- indices --------------------------------------------------------------------------------------------

    def _steps(self, t: Tensor | int, x: Tensor) -> Tensor:
        """``t`` as a LongTensor ``(B,)`` on ``x``'s device (an int is broadcast over the batch)."""
        if isinstance(t, int):
            t = torch.full((x.shape[0],), t, dtype=torch.long)
        t = t.to(x.device, torch.long)
        if t.shape != (x.shape[0],):
            raise InputError(f"timesteps of shape {tuple(t.shape)}: expected ({x.shape[0]},), one per batch item")
        if bool(((t < 0) | (t >= self.num_timesteps)).any()):
            raise InputError(f"timesteps {t.tolist()}: must lie in [0, {self.num_timesteps})")
        return t

    def net_timesteps(self, t: Tensor) -> Tensor:
        """The float32 ``(B,)`` timesteps the network sees: original step (·1000/original_steps if rescaled)."""
        steps = self.timestep_map[t.detach().to("cpu", torch.long)].to(t.device).float()
        return steps * (1000.0 / self.original_steps) if self.rescale_timesteps else steps

    def sample_timesteps(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None):
        """``(batch,)`` LongTensor of step indices drawn uniformly from [0, num_timesteps), or, for a schedule with
        ``max_t``, from the indices whose original step is below it (on the generator's device)."""
        draw_on = generator.device if generator is not None else device
        t = torch.randint(0, self.trained_steps, (batch,), generator=generator, device=draw_on)
        return t.to(device)

    @property
    def trained_steps(self) -> int:
        """How many step indices the network learns: all, or those whose original step is below ``max_t``."""
        return int((self.timestep_map < self.max_t).sum()) if self.max_t else self.num_timesteps

    # -- forward process and posterior ---------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t·x_0, (1 − ᾱ_t)·I); ``noise`` (default: fresh N(0, I)) has x0's shape."""
        t = self._steps(t, x0)
        noise = torch.randn_like(x0) if noise is None else noise
        return gather_coef(self.sqrt_alphas_cumprod, t, x0) * x0 + gather_coef(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t−1} | x_t, x_0): ``(mean (B, C, ...), variance, clipped log-variance)``; the last two are
        ``(B, 1, ..., 1)``."""
        t = self._steps(t, x_t)
        mean = gather_coef(self.posterior_mean_coef1, t, x_t) * x0 + gather_coef(
            self.posterior_mean_coef2, t, x_t
        ) * x_t
        return (
            mean,
            gather_coef(self.posterior_variance, t, x_t),
            gather_coef(self.posterior_log_variance_clipped, t, x_t),
        )

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x_0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t."""
        t = self._steps(t, x_t)
        return gather_coef(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - gather_coef(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        ) * eps

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
        """ε = (x_t − √ᾱ_t·x_0)/√(1−ᾱ_t)."""
        t = self._steps(t, x_t)
        return (gather_coef(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / gather_coef(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    # -- reverse process -------------------------------------------------------------------------------------

    def p_mean_variance(
        self,
        net: Callable[..., Tensor],
        x: Tensor,
        t: Tensor | int,
        *,
        clip_denoised: bool | float = False,
        model_kwargs: dict | None = None,
    ) -> dict[str, Tensor]:
        """p(x_{t−1} | x_t) from ONE network call; the autograd graph is kept (guidance differentiates it).

        Args:
            x: ``(B, C, ...)`` the sample at step ``t`` (respaced index, ``(B,)`` or int).
            clip_denoised: clamp the predicted x_0: ``True`` to [-1, 1] (upstream parity; ``tav``'s data is in
                [-0.5, 0.5], so it is off by default), a number ``c`` to [-c, c] (0.5: the data range).
        Returns:
            ``mean``, ``variance``, ``log_variance``, ``pred_xstart``, ``eps`` (all ``(B, C, ...)``) and the raw
            ``model_output`` (``(B, C or 2C, ...)``).
        """
        t = self._steps(t, x)
        model_output = net(x, self.net_timesteps(t), **(model_kwargs or {}))
        return self._p_from_output(model_output, x, t, clip_denoised)

    def _p_from_output(self, model_output: Tensor, x: Tensor, t: Tensor,
                       clip_denoised: bool | float) -> dict[str, Tensor]:
        """The reverse-step distribution implied by a network output (see :meth:`p_mean_variance`)."""
        c = x.shape[1]
        want = 2 * c if self.learn_sigma else c
        if model_output.shape != (x.shape[0], want, *x.shape[2:]):
            raise InputError(
                f"network output of shape {tuple(model_output.shape)} for input {tuple(x.shape)}: expected {want} "
                f"channels (learn_sigma={self.learn_sigma})"
            )
        if self.learn_sigma:
            head, v = model_output.split(c, dim=1)
            frac = (v + 1) / 2  # learned range: v = -1 -> log β̃_t (clipped), v = +1 -> log β_t
            log_variance = frac * gather_coef(self.log_betas, t, x) + (1 - frac) * gather_coef(
                self.posterior_log_variance_clipped, t, x
            )
            variance = torch.exp(log_variance)
        else:  # fixed small: β̃_t
            head = model_output
            variance = gather_coef(self.posterior_variance, t, x).expand_as(x)
            log_variance = gather_coef(self.posterior_log_variance_clipped, t, x).expand_as(x)
        pred_xstart = head if self.predict_xstart else self.predict_xstart_from_eps(x, t, head)
        if clip_denoised:
            bound = 1.0 if clip_denoised is True else float(clip_denoised)
            pred_xstart = pred_xstart.clamp(-bound, bound)
        if self.predict_xstart or clip_denoised:
            eps = self.predict_eps_from_xstart(x, t, pred_xstart)
        else:  # the network's own ε: identical maths, without a round trip through 1/√ᾱ_t
            eps = head
        mean, _, _ = self.q_posterior(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
            "model_output": model_output,
        }

    # -- training --------------------------------------------------------------------------------------------

    def training_losses(
        self,
        net: Callable[..., Tensor],
        x0: Tensor,
        t: Tensor | int,
        noise: Tensor | None = None,
        model_kwargs: dict | None = None,
        x_src: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample ``(B,)`` losses at steps ``t`` for data ``x0 (B, C, ...)``; one network call.

        ``x_src`` (default ``x0``): the data x_t is noised from, when it is not the target (a sampler that starts
        from another picture noised to t). The losses still target ``x0``: with ε prediction the target is the ε
        that gives back ``x0`` from this x_t, ``(x_t − √ᾱ_t·x0) / √(1 − ᾱ_t)``.

        - ``mse``: mean over non-batch dims of (target − prediction)², target ε (or x_0 with predict_xstart);
        - ``vb`` (learn_sigma or loss "kl"): the variational-bound term in bits — KL(q posterior ‖ p) for t > 0,
          the discretised Gaussian NLL of x_0 at t = 0. For "mse"/"rescaled_mse" the mean prediction is detached,
          so this term trains only the variance; "rescaled_mse" multiplies it by num_timesteps/1000;
        - ``loss``: mse + vb ("kl": vb alone, gradient into the mean as well; "mse" without learn_sigma: mse).
        """
        t = self._steps(t, x0)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0 if x_src is None else x_src, t, noise)
        if x_src is not None:  # predict_eps_from_xstart(x_t, t, x0), so written that rows with x_src = x0 keep ε
            noise = noise + (x_src - x0) / gather_coef(self.sqrt_recipm1_alphas_cumprod, t, x0)
        model_output = net(x_t, self.net_timesteps(t), **(model_kwargs or {}))
        if self.loss == "kl":
            vb = self._vb_bits(model_output, x0, x_t, t)
            return {"vb": vb, "loss": vb}
        c = x0.shape[1]
        head = model_output[:, :c]
        target = x0 if self.predict_xstart else noise
        terms = {"mse": mean_flat((target - head).square())}
        if not self.learn_sigma:
            terms["loss"] = terms["mse"]
            return terms
        frozen = torch.cat([head.detach(), model_output[:, c:]], dim=1)  # VB trains only the variance
        vb = self._vb_bits(frozen, x0, x_t, t)
        if self.loss == "rescaled_mse":
            vb = vb * (self.num_timesteps / 1000.0)
        terms["vb"] = vb
        terms["loss"] = terms["mse"] + vb
        return terms

    def _vb_bits(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The VB term ``(B,)`` in bits: KL(q(x_{t−1}|x_t,x_0) ‖ p(x_{t−1}|x_t)) for t > 0, −log p(x_0|x_1) at 0."""
        out = self._p_from_output(model_output, x_t, t, clip_denoised=False)
        true_mean, _, true_log_variance = self.q_posterior(x0, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        return torch.where(t == 0, mean_flat(nll) / math.log(2.0), kl)

    def __repr__(self) -> str:
        return (
            f"GaussianSchedule(num_timesteps={self.num_timesteps}, original_steps={self.original_steps}, "
            f"learn_sigma={self.learn_sigma}, predict_xstart={self.predict_xstart}, loss={self.loss!r}, "
            f"rescale_timesteps={self.rescale_timesteps})"
        )
