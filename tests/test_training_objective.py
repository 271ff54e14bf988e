"""The shared training objective matches diffusers' DDPMScheduler noise and velocity, and weights as min-SNR says."""

import torch
from diffusers import DDPMScheduler

from latentdiff.training.loss import DiffusionLoss, LossConfig

SCHED = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def test_noise_and_targets_match_diffusers():
    ref = DDPMScheduler.from_config(SCHED)
    loss = DiffusionLoss(SCHED, LossConfig(prediction_type="v_prediction"))
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    torch.testing.assert_close(loss.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    torch.testing.assert_close(loss.target(x0, noise, t), ref.get_velocity(x0, noise, t))
    assert torch.equal(DiffusionLoss(SCHED).target(x0, noise, t), noise)


def test_min_snr_weights():
    loss = DiffusionLoss(SCHED, LossConfig(min_snr_gamma=5.0))
    t = torch.tensor([0, 999])
    ac = loss.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = loss.weights(t)
    assert abs(w[0].item() - 5.0 / snr[0].item()) < 1e-6  # high SNR clipped to γ/snr
    assert abs(w[1].item() - 1.0) < 1e-6                 # low SNR unchanged


def test_loss_is_zero_for_an_oracle():
    loss = DiffusionLoss(SCHED)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8)

    def oracle(x_t, t, context):  # recovers ε exactly from x_t and the known x0
        a, s = loss._coefs(t, x0)
        return (x_t - a * x0) / s

    assert loss(oracle, x0, None, gen).item() < 1e-8
