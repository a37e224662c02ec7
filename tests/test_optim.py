"""The stages' Adam/AdamW (``tav.training.optim.adam``): the fused kernel on CPU, the same updates as torch's
per-tensor loop to float rounding, and parameter groups kept."""

import torch

from tav.training.optim import adam


def _run(opt_factory, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(3))]
    groups = [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}]
    opt = opt_factory(groups)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in params]


def test_adam_is_fused_on_cpu_and_matches_the_per_tensor_update():
    probe = adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, decoupled=True)
    assert probe.defaults["fused"] and isinstance(probe, torch.optim.AdamW)
    assert isinstance(adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3), torch.optim.Adam)
    for decoupled, cls in ((True, torch.optim.AdamW), (False, torch.optim.Adam)):
        ours = _run(lambda g, d=decoupled: adam(g, lr=1e-2, betas=(0.9, 0.95), decoupled=d))
        ref = _run(lambda g, c=cls: c(g, lr=1e-2, betas=(0.9, 0.95), foreach=False))
        start = _run(lambda g: torch.optim.SGD(g, lr=0.0), steps=1)
        for a, b, s in zip(ours, ref, start, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert (a - s).abs().max() > 1e-3  # the update did move the weights (and the decay applied)
