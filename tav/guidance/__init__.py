"""Stage-2 guidance: the audio, direction, text and range losses (``losses``) and the sampler hook that
combines them (``guide.Guidance``). Upstream's variant (``--faithful-quirks``) is
``tav.compat.guidance.UpstreamGuidance``, which ``Guidance(cfg)`` returns when ``cfg.faithful_quirks``."""

from tav.guidance.guide import Conditions, Guidance, GuidanceConfig, build_guidance

__all__ = ["Conditions", "Guidance", "GuidanceConfig", "build_guidance"]
