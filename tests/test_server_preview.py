"""The pipelines' step callback (progress, early stop) and the fitted latent→RGB preview the server shows."""

import numpy as np
import torch
import torch.nn.functional as F

from latentdiff.checkpoints.loader import ASSETS
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline
from latentdiff.server.preview import fit_preview


def test_callback_sees_every_step_and_can_stop_early(tiny_sd1):
    pipe = LatentDiffusionPipeline(tiny_sd1, dtype="fp32")
    seen = []
    full = pipe("cat", num_inference_steps=4, seed=1, width=64, height=64, progress=False,
                callback=lambda i, n, x: seen.append((i, n, tuple(x.shape))))
    assert seen == [(1, 4, (1, 4, 8, 8)), (2, 4, (1, 4, 8, 8)), (3, 4, (1, 4, 8, 8)), (4, 4, (1, 4, 8, 8))]
    plain = pipe("cat", num_inference_steps=4, seed=1, width=64, height=64, progress=False)
    assert np.array_equal(np.asarray(full.images[0]), np.asarray(plain.images[0]))  # observing changes nothing
    stops = []
    cut = pipe("cat", num_inference_steps=4, seed=1, width=64, height=64, progress=False,
               callback=lambda i, n, x: stops.append(i) or i == 2)
    assert stops == [1, 2] and not np.array_equal(np.asarray(cut.images[0]), np.asarray(plain.images[0]))
    img_steps, inp_steps = [], []
    pipe.img2img("cat", plain.images[0], strength=0.5, num_inference_steps=4, seed=1, progress=False,
                 callback=lambda i, n, x: img_steps.append((i, n)))
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    from PIL import Image

    pipe.inpaint("cat", plain.images[0], Image.fromarray(mask), num_inference_steps=3, seed=1, progress=False,
                 callback=lambda i, n, x: inp_steps.append((i, n)))
    assert img_steps == [(1, 2), (2, 2)] and inp_steps == [(1, 3), (2, 3), (3, 3)]


def test_fitted_preview_tracks_the_vae_of_the_default_model():
    """On fresh latents (not the fit's), the linear preview is much closer to the decoded colours than their mean."""
    pipe = LatentDiffusionPipeline.from_pretrained(ASSETS / "default", dtype="fp32")
    preview = fit_preview(pipe)
    g = torch.Generator().manual_seed(123)
    lat = F.interpolate(torch.randn(2, 4, 4, 4, generator=g), size=(16, 16), mode="bilinear") + 0.5 * torch.randn(2, 4, 16, 16, generator=g)
    target = F.avg_pool2d(pipe.decode(lat), 8).permute(0, 2, 3, 1)  # (2, 16, 16, 3)
    approx = torch.stack([preview.rgb(x) for x in lat])             # (2, 16, 16, 3)
    rmse = float(((approx - target) ** 2).mean().sqrt())
    baseline = float(((target - target.mean((0, 1, 2))) ** 2).mean().sqrt())
    print(f"preview rmse {rmse:.4f} vs constant {baseline:.4f}, fit error {preview.fit_error:.4f}")
    assert rmse < 0.7 * baseline and preview.image(lat[0]).size == (128, 128)
