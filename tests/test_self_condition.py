"""Self-conditioning (Chen et al. 2022): the loss feeds the model its own x0 estimate, and so does the sampler."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentdiff.models.unet import UNet
from latentdiff.training.loss import DiffusionLoss, LossConfig

SCHED = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_x0_from_inverts_the_forward_process(kind):
    loss = DiffusionLoss(SCHED, LossConfig(prediction_type=kind))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([0, 400, 999])
    back = loss.x0_from(loss.add_noise(x0, noise, t), loss.target(x0, noise, t), t)
    assert (back - x0).abs().max().item() < 2e-3  # ε at t=999 divides by √ᾱ ≈ 0.068


class Recorder(torch.nn.Module):
    """A stand-in model: prediction = 0.5·x_t + x_self_cond; remembers every x_self_cond it was given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, context, x_self_cond=None):
        self.seen.append(x_self_cond.clone())
        return self.w * x + x_self_cond


def test_loss_feeds_the_no_grad_x0_estimate_and_zeros_otherwise():
    x0, ctx = torch.randn(2, 4, 4, 4), torch.zeros(2, 1, 8)
    always = DiffusionLoss(SCHED, LossConfig(self_condition_prob=1.0))
    m = Recorder()
    always(m, x0, ctx, generator=torch.Generator().manual_seed(1)).backward()
    assert len(m.seen) == 2 and torch.equal(m.seen[0], torch.zeros_like(x0))
    g = torch.Generator().manual_seed(1)  # replay the draws: noise, t, then the coin
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (2,), generator=g)
    x_t = always.add_noise(x0, noise, t)
    assert torch.allclose(m.seen[1], always.x0_from(x_t, 0.5 * x_t, t), atol=1e-5)
    assert m.w.grad is not None and not m.seen[1].requires_grad
    never = DiffusionLoss(SCHED, LossConfig(self_condition_prob=1e-9))
    m = Recorder()
    never(m, x0, ctx, generator=torch.Generator().manual_seed(1))
    assert len(m.seen) == 1 and torch.equal(m.seen[0], torch.zeros_like(x0))


def test_self_conditioning_unet_trains_and_samples():
    from conftest import tiny_components

    from latentdiff.pipelines.guidance import CFGDenoiser, x0_estimator
    from latentdiff.pipelines.samplers import make_scheduler
    from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

    c = tiny_components()
    torch.manual_seed(0)
    c.unet = UNet(replace(c.unet.config, self_condition=True))
    loss = DiffusionLoss(SCHED, LossConfig(self_condition_prob=1.0))
    ctx = torch.randn(2, 5, c.unet.config.cross_attention_dim)
    loss(c.unet, torch.randn(2, 4, 8, 8), ctx, generator=torch.Generator().manual_seed(0)).backward()
    w = c.unet.conv_in.weight.grad  # (ch0, 4 + 4, 3, 3): the x0 channels learn too
    assert w.shape[1] == 8 and w[:, 4:].abs().sum() > 0 and all(p.grad is not None for p in c.unet.parameters())
    c.unet.eval()

    seen, outs = [], []
    forward = c.unet.forward

    def spy(x, t, ctx, x_self_cond=None):
        seen.append(x_self_cond)
        outs.append(forward(x, t, ctx, x_self_cond))
        return outs[-1]
    c.unet.forward = spy
    scheduler = make_scheduler("euler", c.scheduler_config)
    scheduler.set_timesteps(3)
    den = CFGDenoiser(c.unet, torch.randn(4, 5, c.unet.config.cross_attention_dim), 7.5, scheduler=scheduler)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        den(x, scheduler.timesteps[0])
        den(x, scheduler.timesteps[1])
    assert seen[0] is None and seen[1].shape == (4, 4, 8, 8)  # zeros first, then the estimate per CFG branch
    want = x0_estimator(scheduler)(torch.cat([x, x]), outs[0], scheduler.timesteps[0])
    assert torch.allclose(seen[1], want) and want.abs().sum() > 0
    pipe = LatentDiffusionPipeline(c)
    img = pipe("a cat", num_inference_steps=3, seed=0, progress=False).images[0]
    assert img.size == (64, 64) and len(seen) == 2 + 3
