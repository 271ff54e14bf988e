"""`LatentDiffusionPipeline`: the shared base with the three modes as its methods; the one module that imports all three.

Each mode is a function taking the pipeline first (text_to_image.txt2img, image_to_image.img2img, inpaint.inpaint), so its
signature and docstring are written once, where its steps are, and are the method's own.
"""

from __future__ import annotations

from . import image_to_image, text_to_image
from . import inpaint as inpainting
from .base import PipelineBase


class LatentDiffusionPipeline(PipelineBase):
    """Stable-Diffusion-style text-to-image, img2img and inpainting with our U-Net and diffusers/transformers VAE, CLIP
    and schedulers."""

    __call__ = text_to_image.txt2img   # pipe(prompt, ...): draw from seeded noise
    img2img = image_to_image.img2img   # pipe.img2img(prompt, image, ...): redraw a picture to `strength`
    inpaint = inpainting.inpaint       # pipe.inpaint(prompt, image, mask, ...): repaint the mask's white part
