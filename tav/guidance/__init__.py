"""Stage-2 guidance: the audio, direction, text and range losses (``losses``) and the sampler hook that
combines them (``guide.Guidance``)."""

from tav.guidance.guide import Conditions, Guidance, GuidanceConfig

__all__ = ["Conditions", "Guidance", "GuidanceConfig"]
