"""Retrieval with a joint encoder: does the embedding of a clip's sound (or caption) find that clip's frame among
the frames of other clips?"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tav.encoders.base import Encoder


@torch.no_grad()
def retrieval_r1(encoder: Encoder, items: Sequence[dict]) -> dict[str, float]:
    """R@1 among ``len(items)`` candidates (``tav.data.frame_audio`` evaluation items, one clip each).

    Each clip contributes its middle item frame: ``audio_to_frame`` asks whether that frame's audio window is
    nearest to its own frame; ``caption_to_frame`` whether the caption is nearest to a frame of a clip with the
    same caption (a frame cannot tell two clips with one caption apart). Chance is about ``1 / len(items)``.
    """
    mid = [it["images"].shape[0] // 2 for it in items]
    frames = torch.stack([it["images"][m] for it, m in zip(items, mid, strict=True)]).to(encoder.device)
    audio = torch.stack([it["audio"][m] for it, m in zip(items, mid, strict=True)]).to(encoder.device)
    captions = [it["caption"] for it in items]
    f = F.normalize(encoder.encode_images(frames).float(), dim=-1)
    a = F.normalize(encoder.encode_audio(audio).float(), dim=-1)
    t = F.normalize(encoder.encode_texts(captions).float(), dim=-1)
    n = len(items)
    audio_hits = (a @ f.T).argmax(1).cpu() == torch.arange(n)
    best = (t @ f.T).argmax(1).cpu().tolist()
    caption_hits = [captions[j] == captions[i] for i, j in enumerate(best)]
    return {"audio_to_frame": float(audio_hits.float().mean()), "caption_to_frame": sum(caption_hits) / n,
            "candidates": n}
