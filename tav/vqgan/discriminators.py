"""2D and 3D PatchGAN discriminators.

Source: pix2pixHD's multi-feature ``NLayerDiscriminator`` (Wang et al. 2018,
https://github.com/NVIDIA/pix2pixHD), as used by TATS. Blocks are named ``model0 .. model{n+1}`` with the
conv at index 0 and the BatchNorm at index 1, as in the released checkpoints.
"""

from __future__ import annotations

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """PatchGAN over frames (``dims=2``, input ``(B, C, H, W)``) or clips (``dims=3``, ``(B, C, T, H, W)``).

    Layout for ``n_layers=3, channels=64``: conv 4/s2 C->64 + LReLU(0.2); conv 4/s2 64->128, 128->256
    (+ BN + LReLU); conv 4/s1 256->512 (+ BN + LReLU); conv 4/s1 512->1. All convs use padding 2.
    A 96x96 frame gives ``(B, 1, 15, 15)`` logits; a 16x96x96 clip ``(B, 1, 5, 15, 15)``.
    """

    def __init__(self, in_channels: int, channels: int = 64, n_layers: int = 3, dims: int = 2):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        widths = [in_channels] + [min(channels * 2**i, 512) for i in range(n_layers + 1)]
        blocks = [nn.Sequential(conv(widths[0], widths[1], 4, stride=2, padding=2), nn.LeakyReLU(0.2, True))]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            blocks.append(nn.Sequential(conv(widths[i], widths[i + 1], 4, stride=stride, padding=2),
                                        norm(widths[i + 1]), nn.LeakyReLU(0.2, True)))
        blocks.append(nn.Sequential(conv(widths[-1], 1, 4, stride=1, padding=2)))
        for i, block in enumerate(blocks):
            self.add_module(f"model{i}", block)
        self.n_blocks = len(blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns ``(logits, features)``: logits ``(B, 1, ...)`` unbounded real-vs-fake scores per patch;
        ``features`` the outputs of all ``n_layers + 2`` blocks (the last one is the logits)."""
        feats = []
        for i in range(self.n_blocks):
            x = getattr(self, f"model{i}")(x)
            feats.append(x)
        return x, feats
