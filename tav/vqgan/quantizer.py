"""EMA vector-quantisation codebook; no learned embedding parameter.

Source: EMA VQ update of van den Oord et al. 2017, "Neural Discrete Representation Learning", App. A.1
(https://arxiv.org/abs/1711.00937), with Laplace-smoothed counts and the data-dependent init / random
restart of VideoGPT/TATS (https://github.com/songweige/TATS). ``restart_sampling="error"`` (ours) draws the
restart pool with probability proportional to each row's squared distance to its code, the D^2 weighting of
k-means++ (Arthur & Vassilvitskii 2007), so dead codes go where the codebook fits the data worst.

Under ``torch.distributed`` the code counts and sums are all-reduced and every random pool (init and
restarts) is broadcast from rank 0, so all ranks keep bit-identical codebooks.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-7  # Laplace smoothing of the EMA counts
_DIST_CHUNK = 2**24  # max elements of one (rows x codes) distance block


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place (no-op without an initialised process group)."""
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast_(t: Tensor) -> Tensor:
    """Overwrite ``t`` with rank 0's copy in place (no-op without an initialised process group)."""
    if _distributed():
        dist.broadcast(t, src=0)
    return t


class EMACodebook(nn.Module):
    """K x D codebook updated by exponential moving averages of the encoder outputs assigned to it.

    Buffers (all saved): ``embeddings (K, D)``, ``N (K)`` EMA counts, ``z_avg (K, D)`` EMA sums and
    ``initialised ()`` bool. The first three carry upstream's names so released checkpoints load;
    ``initialised`` is ours. A state dict without it (every released checkpoint) loads as initialised.
    """

    def __init__(self, n_codes: int, dim: int, decay: float = 0.99, commitment_weight: float = 0.25,
                 random_restart: bool = True, restart_thres: float = 1.0, restart_sampling: str = "uniform",
                 restart_reset_ema: bool = False):
        super().__init__()
        if restart_sampling not in ("uniform", "error"):
            raise ValueError(f"restart_sampling={restart_sampling!r}: use 'uniform' or 'error'")
        self.n_codes, self.dim, self.decay = n_codes, dim, decay
        self.commitment_weight = commitment_weight
        self.random_restart, self.restart_thres = random_restart, restart_thres
        self.restart_sampling, self.restart_reset_ema = restart_sampling, restart_reset_ema
        emb = torch.randn(n_codes, dim)
        self.register_buffer("embeddings", emb)
        self.register_buffer("N", torch.zeros(n_codes))
        self.register_buffer("z_avg", emb.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Released (upstream) checkpoints have no flag; they hold a trained codebook.
        if prefix + "embeddings" in state_dict:
            state_dict.setdefault(prefix + "initialised", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- assignment (no state change)
    @torch.no_grad()
    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean) for each row of ``flat (M, D)`` -> ``(M,)`` long."""
        return self._nearest(flat)[0]

    @torch.no_grad()
    def _nearest(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code ``(M,)`` long and its squared distance ``(M,)`` float32 >= 0 for each row of ``flat (M, D)``.

        Distances ||z||^2 - 2 z.e + ||e||^2 are computed in float32 (also under autocast) in row blocks
        that bound memory at ~64 MiB.
        """
        emb = self.embeddings.float()
        e_sq = emb.square().sum(1)  # (K,)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        dist = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        step = max(1, _DIST_CHUNK // self.n_codes)
        with torch.autocast(flat.device.type, enabled=False):
            for s in range(0, flat.shape[0], step):
                f = flat[s:s + step].float()
                d = (f @ emb.t()).mul_(-2).add_(f.square().sum(1, keepdim=True)).add_(e_sq)  # (m, K)
                best = d.min(1)
                out[s:s + step], dist[s:s + step] = best.indices, best.values.clamp_(min=0)
        return out, dist

    def assign(self, z: Tensor) -> Tensor:
        """Codes of latents ``z (B, D, t, h, w)`` -> ``(B, t, h, w)`` long in [0, K)."""
        flat = z.detach().movedim(1, -1).reshape(-1, self.dim)  # (B*t*h*w, D)
        return self.nearest(flat).view(z.shape[0], *z.shape[2:])

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors of ``codes (B, t, h, w)`` -> ``(B, D, t, h, w)`` float32."""
        return F.embedding(codes, self.embeddings).movedim(-1, 1)

    # ---------------------------------------------------------------- training forward
    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """Quantise ``z (B, D, t, h, w)``; in training mode also init (once) and EMA-update the codebook.

        Returns a dict: ``embeddings`` (B, D, t, h, w) straight-through quantised latents (value = the
        codes' vectors, gradient = identity to ``z``), ``codes`` (B, t, h, w) long,
        ``commitment_loss`` scalar = beta * MSE(z, sg(e)), ``perplexity`` scalar = exp(entropy of the
        batch's code usage) in [1, K]. Runs in float32 even under autocast.
        """
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            flat = z.detach().movedim(1, -1).reshape(-1, self.dim)  # (M, D), M = B*t*h*w
            if self.training and not bool(self.initialised):
                self._init_from(flat)
            codes, dist = self._nearest(flat)
            quantised = F.embedding(codes, self.embeddings)  # (M, D): vectors before this step's update
            counts = torch.bincount(codes, minlength=self.n_codes).to(flat.dtype)  # (K,) local usage
            if self.training:
                self._ema_update(flat, codes, counts, dist)
            quantised = quantised.view(z.shape[0], *z.shape[2:], self.dim).movedim(-1, 1)
            commitment = self.commitment_weight * F.mse_loss(z, quantised)
            probs = counts / flat.shape[0]
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            return {
                "embeddings": z + (quantised - z).detach(),
                "codes": codes.view(z.shape[0], *z.shape[2:]),
                "commitment_loss": commitment,
                "perplexity": perplexity,
            }

    @torch.no_grad()
    def _random_pool(self, flat: Tensor, dist: Tensor | None = None) -> Tensor:
        """K random rows of ``flat (M, D)``, tiled with N(0, (0.01/sqrt(D))^2) noise when M < K; from rank 0.

        With ``dist (M,)`` (squared distance of each row to its code) the K rows are drawn with replacement with
        probability proportional to ``dist``, plus the same small noise so that repeats do not tie.
        """
        m = flat.shape[0]
        if dist is not None and bool(dist.sum() > 0):
            rows = torch.multinomial(dist.double(), self.n_codes, replacement=True)
            pool = flat[rows] + torch.randn(self.n_codes, self.dim, device=flat.device) * (0.01 / math.sqrt(self.dim))
            return _broadcast_(pool.contiguous())
        if m < self.n_codes:
            flat = flat.repeat(-(-self.n_codes // m), 1)
            flat = flat + torch.randn_like(flat) * (0.01 / math.sqrt(self.dim))
        pool = flat[torch.randperm(flat.shape[0], device=flat.device)[: self.n_codes]].contiguous()
        return _broadcast_(pool)

    @torch.no_grad()
    def _init_from(self, flat: Tensor) -> None:
        """Data-dependent init from the first training batch: embeddings = z_avg = K random rows, N = 1."""
        pool = self._random_pool(flat)
        self.embeddings.copy_(pool)
        self.z_avg.copy_(pool)
        self.N.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor, counts: Tensor, dist: Tensor) -> None:
        """N <- d N + (1-d) n;  z_avg <- d z_avg + (1-d) sum z;  e = z_avg / Laplace-smoothed N; then restarts.

        ``dist (M,)``: each row's squared distance to its code, the restart weights of ``restart_sampling="error"``.
        """
        sums = torch.zeros_like(self.z_avg).index_add_(0, codes, flat)  # (K, D) sum of assigned rows
        counts = _all_reduce_(counts.clone())
        sums = _all_reduce_(sums)
        self.N.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.z_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.N.sum()
        weights = (self.N + _EPS) / (n + self.n_codes * _EPS) * n  # (K,)
        self.embeddings.copy_(self.z_avg / weights.unsqueeze(1))
        if self.random_restart:
            pool = self._random_pool(flat, dist if self.restart_sampling == "error" else None)
            dead = (self.N < self.restart_thres).unsqueeze(1)  # (K, 1)
            self.embeddings.copy_(torch.where(dead, pool, self.embeddings))
            if self.restart_reset_ema:  # the restarted code keeps its new place unless it goes unused again
                self.z_avg.copy_(torch.where(dead, pool * self.restart_thres, self.z_avg))
                self.N.copy_(torch.where(dead.squeeze(1), torch.full_like(self.N, self.restart_thres), self.N))
