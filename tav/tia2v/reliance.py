"""How much a TIA2V motion model relies on its sound: the conditioning ablation.

The same noised clips are denoised at fixed noise levels three ways: with each clip's own audio tokens, with
another clip's (the batch rolled by one clip) and with the null tokens (zeros: what ``--audio_dropout`` trains
and ``--audio_cfg_scale`` contrasts with). Each way is scored by the squared error of the predicted clean frames
against the true ones on frames 1.. (frame 0 is the given picture): over all those frames, and over the frames
whose picture changed from the frame before, where a model that follows the sound has something to gain.

A model that ignores its audio scores the same three ways. ``gain`` = (other − own) / other on the changed
frames is the share of that error the right sound removes.

``start="data"`` noises the clips' own frames (the training objective); ``start="first"`` noises copies of frame
0, where ``--motion_init first`` starts sampling: there only the sound can say that the picture moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from tav.diffusion.schedule import GaussianSchedule
from tav.errors import InputError
from tav.pipelines.tia2v import FrameDenoiser
from tav.training.tia2v_module import conditions_of

STARTS = ("data", "first")
CHANGE_THRESHOLD = 0.02  # mean |frame f − frame f−1| (data units, [-0.5, 0.5]) above which a frame "changed"
WAYS = ("own", "other", "null")
BATCH_KEYS = ("video", "text", "image", "audio_tokens")


@dataclass(frozen=True)
class Reliance:
    """One noise level's errors (mean squared error of the predicted clean frames, data units)."""

    t: int
    start: str
    frames: int  # frames scored: frames 1.. of every clip
    changed: int  # of those, the frames whose picture changed from the frame before
    own: float
    other: float
    null: float
    own_changed: float | None  # None when no frame changed
    other_changed: float | None
    null_changed: float | None

    @property
    def gain(self) -> float | None:
        """(other − own) / other on the changed frames: 0 for a model deaf to its sound; None without changes."""
        if self.own_changed is None or not self.other_changed:
            return None
        return (self.other_changed - self.own_changed) / self.other_changed

    def to_dict(self) -> dict:
        return {**asdict(self), "gain": self.gain}


def changed_frames(video: Tensor, threshold: float = CHANGE_THRESHOLD) -> Tensor:
    """``video (B, C, F, H, W)`` -> ``(B, F − 1)`` bool: frame f (f ≥ 1) differs from frame f − 1 by more than
    ``threshold`` in mean absolute value."""
    return (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(1, 3, 4)) > threshold


def _schedule(net: nn.Module) -> GaussianSchedule:
    """The process ``net`` was trained under, checking that it is a motion U-Net that carries one."""
    config = getattr(net, "config", None)
    if getattr(config, "part", None) != "motion":
        raise InputError(f"audio reliance needs a motion U-Net, got a {getattr(config, 'part', type(net).__name__)} "
                         "model")
    if getattr(net, "process", None) is None:
        raise InputError("audio reliance needs the motion U-Net's process (net.process): load the weights with "
                         "tav.tia2v.load.load_tia2v_unet")
    return GaussianSchedule.from_config(net.process)


def _check(batch: dict, timesteps: Sequence[int], start: str, steps: int) -> None:
    if start not in STARTS:
        raise InputError(f"audio reliance start {start!r}: must be one of {STARTS}")
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise InputError(f"audio reliance needs batch entries {list(BATCH_KEYS)}; missing {missing}")
    if batch["video"].dim() != 5:
        raise InputError(f"audio reliance needs batch['video'] (B, 3, F, H, W); got {tuple(batch['video'].shape)}")
    if len(batch["video"]) < 2:
        raise InputError("audio reliance needs at least 2 clips (each is also scored with another clip's sound)")
    bad = [t for t in timesteps if not 0 < int(t) < steps]
    if bad:
        raise InputError(f"audio reliance timesteps {bad}: each must be in [1, {steps})")


@torch.no_grad()
def audio_reliance(net: nn.Module, batch: dict, timesteps: Sequence[int], *, start: str = "data",
                   change_threshold: float = CHANGE_THRESHOLD, seed: int = 0) -> list[Reliance]:
    """The conditioning ablation of a motion U-Net (see the module docstring), one :class:`Reliance` per t.

    ``net``: a motion ``TIA2VUNet`` in eval mode carrying ``net.process`` (``tav.tia2v.load.load_tia2v_unet``);
    ``batch``: ``video (B, 3, F, H, W)`` in [-0.5, 0.5], ``text (B, 77, D)``, ``image (B, D)`` and
    ``audio_tokens (B, F, P, D_a)``, B ≥ 2 (``TIA2VDataset`` items stacked); ``timesteps``: original steps of
    ``net.process``. The noise is drawn once from ``seed`` and shared by every t and every way.
    """
    schedule = _schedule(net)
    _check(batch, timesteps, start, schedule.num_timesteps)
    device = next(net.parameters()).device
    video = batch["video"].to(device=device, dtype=torch.float32)
    b, f = video.shape[0], video.shape[2]
    src = video[:, :, :1].expand_as(video) if start == "first" else video
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    clean = getattr(net.config, "first_frame", "noised") == "clean"
    denoiser = FrameDenoiser(net)
    audio = batch["audio_tokens"].to(device)
    tokens = {"own": audio, "other": audio.roll(1, dims=0), "null": torch.zeros_like(audio)}
    changed = changed_frames(video, change_threshold)  # (B, F-1)
    rows = []
    for t in (int(t) for t in timesteps):
        x_t = schedule.q_sample(src, t, noise=noise)
        if not clean:  # upstream's noised first frame: frame 0 is its own frame noised, not a copy
            x_t[:, :, 0] = schedule.q_sample(video[:, :, 0], t, noise=noise[:, :, 0])
        steps = schedule.net_timesteps(torch.full((b,), t, device=device))
        errors = {}
        for way in WAYS:
            kwargs = conditions_of({**batch, "audio_tokens": tokens[way]}, "motion")
            kwargs = {k: v.to(device) for k, v in kwargs.items()}
            out = denoiser(x_t, steps, video[:, :, 0] if clean else None, **kwargs).float()[:, :3]
            x0 = out if schedule.predict_xstart else schedule.predict_xstart_from_eps(x_t, t, out)
            errors[way] = (x0.clamp(-1, 1) - video).square().mean(dim=(1, 3, 4))[:, 1:]  # (B, F-1)
        any_changed = bool(changed.any())
        rows.append(Reliance(
            t=t, start=start, frames=b * (f - 1), changed=int(changed.sum()),
            **{w: errors[w].mean().item() for w in WAYS},
            **{f"{w}_changed": errors[w][changed].mean().item() if any_changed else None for w in WAYS}))
    return rows
