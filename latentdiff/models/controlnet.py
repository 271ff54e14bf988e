"""ControlNet (Zhang et al. 2023, https://arxiv.org/abs/2302.05543): a trainable copy of the U-Net's encoder that
reads a control image and returns residuals for the U-Net's skip features and middle block.

Parameter names are diffusers' `ControlNetModel`'s; the encoder is built by the U-Net's own `encoder_blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentDiffError
from .blocks import TimestepEmbedding, timestep_embedding
from .unet import UNet, UNetConfig, encoder_blocks

_CROSS = "CrossAttnDownBlock2D"
# diffusers ControlNetModel config keys that must keep their default for the SD 1.x/2.x family.
_UNSUPPORTED = {"class_embed_type": None, "encoder_hid_dim": None, "num_class_embeds": None,
                "resnet_time_scale_shift": "default", "only_cross_attention": False, "act_fn": "silu",
                "mid_block_type": "UNetMidBlock2DCrossAttn"}


@dataclass
class ControlNetConfig:
    """Architecture of a ControlNet: the U-Net encoder it copies plus the control image's embedding."""

    unet: UNetConfig = field(default_factory=UNetConfig)                    # encoder layout (SD family only)
    conditioning_channels: int = 3                                          # control image channels
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)  # hint encoder widths (each step halves the side)
    channel_order: str = "rgb"                                              # "bgr": the image's channels are flipped first
    global_pool_conditions: bool = False                                    # residuals averaged over space (the "shuffle" model)

    def __post_init__(self) -> None:
        self.conditioning_embedding_out_channels = tuple(self.conditioning_embedding_out_channels)
        if self.unet.variant_settings():
            raise LatentDiffError(f"a ControlNet needs an SD-family U-Net layout, not {', '.join(self.unet.variant_settings())}")
        if self.channel_order not in ("rgb", "bgr"):
            raise LatentDiffError(f"unknown ControlNet channel order {self.channel_order!r} (rgb or bgr)")

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "ControlNetConfig":
        """Translate a diffusers `ControlNetModel` config.json dict, refusing features outside SD 1.x/2.x/XL."""
        for key, default in _UNSUPPORTED.items():
            if cfg.get(key, default) != default:
                raise LatentDiffError(f"unsupported ControlNet feature {key}={cfg[key]!r} (only SD 1.x/2.x layouts are implemented)")
        down = cfg.get("down_block_types", [_CROSS] * 3 + ["DownBlock2D"])
        unet = {"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1280, **cfg, "down_block_types": down,
                "up_block_types": ["CrossAttnUpBlock2D" if t == _CROSS else "UpBlock2D" for t in reversed(down)]}
        return cls(unet=UNetConfig.from_diffusers(unet), conditioning_channels=cfg.get("conditioning_channels", 3),
                   conditioning_embedding_out_channels=tuple(cfg.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)),
                   channel_order=cfg.get("controlnet_conditioning_channel_order", "rgb"),
                   global_pool_conditions=cfg.get("global_pool_conditions", False))

    def to_diffusers(self) -> dict:
        """A diffusers `ControlNetModel` config dict describing the same network."""
        u = self.unet.to_diffusers()
        keep = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "attention_head_dim",
                "cross_attention_dim", "transformer_layers_per_block", "use_linear_projection", "norm_num_groups",
                "norm_eps", "flip_sin_to_cos", "freq_shift", "upcast_attention", "downsample_padding", "mid_block_scale_factor")
        keep += ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")  # SDXL
        return {"_class_name": "ControlNetModel", **{k: u[k] for k in keep if k in u}, "conditioning_channels": self.conditioning_channels,
                "conditioning_embedding_out_channels": list(self.conditioning_embedding_out_channels),
                "controlnet_conditioning_channel_order": self.channel_order, "global_pool_conditions": self.global_pool_conditions}

    @classmethod
    def for_unet(cls, unet: UNetConfig, **kwargs) -> "ControlNetConfig":
        """The ControlNet of a U-Net: its encoder with 4 latent input channels (an inpainting U-Net's ControlNet too)."""
        return cls(unet=replace(unet, in_channels=4, out_channels=4, sample_size=64), **kwargs)  # size: unused, diffusers' default


class ControlNetConditioningEmbedding(nn.Module):
    """Control image (B, C, H, W) → features at the latent size (B, ch0, H/8, W/8): strided 3×3 convs with SiLU."""

    def __init__(self, out_channels: int, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)  # zero-initialised in training ("zero convolution")
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


def _zero_conv(ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(ch, ch, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNet(nn.Module):
    """(noisy latents, t, text, control image) → (residual per U-Net skip feature, middle-block residual)."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        c = config.unet
        ch0, temb_dim = c.block_out_channels[0], c.block_out_channels[0] * 4
        common = dict(context_dim=c.cross_attention_dim, groups=c.norm_num_groups,
                      eps=c.norm_eps, linear_proj=c.use_linear_projection)
        self.conv_in = nn.Conv2d(c.in_channels, ch0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch0, temb_dim)
        if c.addition_embed_type == "text_time":  # SDXL's added conditioning, as the U-Net's
            self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, temb_dim)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(ch0, config.conditioning_channels,
                                                                        config.conditioning_embedding_out_channels)
        self.down_blocks, self.mid_block = encoder_blocks(c, temb_dim, common)
        skip_channels = [ch0]  # one zero conv per skip feature the U-Net keeps, in push order
        for i, block in enumerate(self.down_blocks):
            skip_channels += [c.block_out_channels[i]] * (len(block.resnets) + (block.downsamplers is not None))
        self.controlnet_down_blocks = nn.ModuleList(_zero_conv(ch) for ch in skip_channels)
        self.controlnet_mid_block = _zero_conv(c.block_out_channels[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor, conditioning_scale: float = 1.0, guess_mode: bool = False,
                added_cond_kwargs: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """sample (B, 4, h, w), controlnet_cond (B, C, 8h, 8w) in [0, 1] → ([(B, C_i, h_i, w_i)], (B, C_mid, h_mid, w_mid)).

        guess_mode scales the residuals from 0.1 (first skip) to 1.0 (middle block) on a log scale, as diffusers.
        SDXL ControlNets take the U-Net's added_cond_kwargs (pooled text, time ids).
        """
        c = self.config.unet
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(1).expand(b) if t.ndim == 0 else t.expand(b)
        temb = timestep_embedding(t, c.block_out_channels[0], flip_sin_to_cos=c.flip_sin_to_cos,
                                  freq_shift=c.freq_shift).to(sample.dtype)  # (B, ch0)
        temb = self.time_embedding(temb)  # (B, 4·ch0)
        if c.addition_embed_type == "text_time":  # the U-Net's own computation, on this network's add_embedding
            view = SimpleNamespace(config=c, add_embedding=self.add_embedding, dtype=self.dtype)
            temb = temb + UNet.added_embedding(view, added_cond_kwargs, b).to(temb.dtype)
        if self.config.channel_order == "bgr":
            controlnet_cond = controlnet_cond.flip(1)
        x = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)  # (B, ch0, h, w)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, encoder_hidden_states)

        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(x)
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device) * conditioning_scale  # 0.1 … 1.0
            down, mid = [d * s for d, s in zip(down, scales)], mid * scales[-1]
        else:
            down, mid = [d * conditioning_scale for d in down], mid * conditioning_scale
        if self.config.global_pool_conditions:
            down, mid = [d.mean(dim=(2, 3), keepdim=True) for d in down], mid.mean(dim=(2, 3), keepdim=True)
        return down, mid
