"""Our conditional U-Net: the denoiser of latent diffusion, with diffusers-identical parameter names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentDiffError
from .blocks import DownBlock, MidBlock, TimestepEmbedding, UpBlock, timestep_embedding
from .variants import DOWNSAMPLERS, UPSAMPLERS, attention_kind

# diffusers block type names we understand, and what they mean for us.
_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
# diffusers config keys that must keep their default for the SD family we implement.
_UNSUPPORTED = {
    "class_embed_type": None, "time_cond_proj_dim": None, "encoder_hid_dim": None,
    "num_class_embeds": None, "time_embedding_type": "positional", "resnet_time_scale_shift": "default",
    "only_cross_attention": False, "dual_cross_attention": False, "center_input_sample": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "act_fn": "silu", "mid_block_type": "UNetMidBlock2DCrossAttn",
}

LATENTDIFF_CLASS = "latentdiff.UNet"  # unet/config.json _class_name of variants diffusers cannot express


@dataclass
class UNetConfig:
    """Architecture of the U-Net; defaults are Stable Diffusion 1.x."""

    in_channels: int = 4                                    # latent channels in (9 for inpainting models)
    out_channels: int = 4                                   # predicted noise / v channels
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # width per resolution level
    layers_per_block: int = 2                               # ResNet blocks per down level (up levels get one more)
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # cross-attention transformer at each down level
    num_heads: tuple[int, ...] | int = 8                    # heads per level (SD1: 8 everywhere; SD2: 5, 10, 20, 20)
    cross_attention_dim: int = 768                          # text embedding width (768 CLIP ViT-L, 1024 OpenCLIP ViT-H)
    transformer_depth: int | tuple[int, ...] = 1            # transformer blocks per Transformer2D, or per level (SDXL: 1, 2, 10)
    use_linear_projection: bool = False                     # SD2: Linear proj_in/out instead of 1×1 convs
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    upcast_attention: bool = False                          # kept for round-tripping SD2 configs; SDPA ignores it
    sample_size: int = 64                                   # latent side the model was trained at
    # Architecture-lab variants (docs/ARCHITECTURES.md). The defaults are SD's; only they have a diffusers equivalent.
    downsample: str = "conv"                                # conv (SD) | avgpool | maxpool | blurpool | unshuffle
    upsample: str = "nearest_conv"                          # nearest_conv (SD) | bilinear_conv | transposed | shuffle
    attention_types: tuple[str, ...] | None = None          # per level none | linear | full; overrides attention_levels
    self_condition: bool = False                            # x_self_cond input (Chen et al. 2022, https://arxiv.org/abs/2208.04202)
    skip_connections: bool = True                           # False: the no-skip ablation (the decoder sees no encoder features)
    # SDXL's added conditioning (Podell et al. 2023, https://arxiv.org/abs/2307.01952 §2.2): "text_time" adds an MLP of
    # [pooled text embedding, sinusoidal features of the six size/crop numbers] to the timestep embedding.
    addition_embed_type: str | None = None                  # None (SD1/SD2) | "text_time" (SDXL)
    addition_time_embed_dim: int | None = None              # sinusoidal width per micro-conditioning number (SDXL: 256)
    projection_class_embeddings_input_dim: int | None = None  # pooled width + n_numbers · addition_time_embed_dim (2816 base)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        n = len(self.block_out_channels)
        if self.attention_types is not None:
            kinds = tuple(attention_kind(a) for a in self.attention_types)
            if len(kinds) != n:
                raise LatentDiffError(f"attention_types has {len(kinds)} entries for {n} levels")
            self.attention_levels = tuple(k != "none" for k in kinds)
            self.attention_types = kinds if "linear" in kinds else None  # canonical: kept only where a bool cannot say it
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if self.downsample not in DOWNSAMPLERS:
            raise LatentDiffError(f"unknown downsample {self.downsample!r}; choose one of {', '.join(DOWNSAMPLERS)}")
        if self.upsample not in UPSAMPLERS:
            raise LatentDiffError(f"unknown upsample {self.upsample!r}; choose one of {', '.join(UPSAMPLERS)}")
        if len(self.attention_levels) != n:
            raise LatentDiffError(f"attention_levels has {len(self.attention_levels)} entries for {n} levels")
        heads = (self.num_heads,) * n if isinstance(self.num_heads, int) else tuple(self.num_heads)
        if len(heads) != n:
            raise LatentDiffError(f"num_heads has {len(heads)} entries for {n} levels")
        self.num_heads = heads
        if not isinstance(self.transformer_depth, int):
            self.transformer_depth = tuple(int(d) for d in self.transformer_depth)
            if len(self.transformer_depth) != n:
                raise LatentDiffError(f"transformer_depth has {len(self.transformer_depth)} entries for {n} levels")
        if self.addition_embed_type not in (None, "text_time"):
            raise LatentDiffError(f"unsupported addition_embed_type {self.addition_embed_type!r} (None or 'text_time')")
        if self.addition_embed_type and not (self.addition_time_embed_dim and self.projection_class_embeddings_input_dim):
            raise LatentDiffError("addition_embed_type 'text_time' needs addition_time_embed_dim and projection_class_embeddings_input_dim")
        for ch, h in zip(self.block_out_channels, heads):
            if ch % h or ch % self.norm_num_groups:
                raise LatentDiffError(f"width {ch} is not divisible by {h} heads and {self.norm_num_groups} groups")

    @property
    def level_depth(self) -> tuple[int, ...]:
        """Transformer blocks per level; the middle block uses the last level's (as diffusers)."""
        d = self.transformer_depth
        return (d,) * len(self.block_out_channels) if isinstance(d, int) else d

    @property
    def level_attention(self) -> tuple[str, ...]:
        """Attention kind per down level: 'none', 'linear' or 'full' (SD's self + cross-attention transformer)."""
        return self.attention_types or tuple("full" if a else "none" for a in self.attention_levels)

    def variant_settings(self) -> list[str]:
        """The settings that leave the SD family (empty when diffusers' UNet2DConditionModel can express this network)."""
        sd = UNetConfig.__dataclass_fields__
        out = [f"{k}={getattr(self, k)!r}" for k in ("downsample", "upsample", "self_condition", "skip_connections")
               if getattr(self, k) != sd[k].default]
        return out + ([f"attention_types={list(self.attention_types)!r}"] if self.attention_types else [])

    @classmethod
    def from_dims(cls, dim: int = 64, dim_mults: tuple[int, ...] = (1, 2, 4, 8), **kwargs) -> "UNetConfig":
        """lucidrains-style widths: level i has dim·dim_mults[i] channels; unless given, linear attention, full at the last level."""
        mults = tuple(dim_mults)
        if "attention_levels" not in kwargs and "attention_types" not in kwargs:
            kwargs["attention_types"] = ("linear",) * (len(mults) - 1) + ("full",)
        return cls(block_out_channels=tuple(dim * m for m in mults), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Build from our own keys (or `dim`/`dim_mults` for the widths), failing with one line on an unknown key."""
        known = {f.name for f in fields(cls)} | {"dim", "dim_mults"}
        for key in d:
            if key not in known:
                raise LatentDiffError(f"unknown U-Net config key {key!r}")
        if "dim" in d or "dim_mults" in d:
            if "block_out_channels" in d:
                raise LatentDiffError("give either block_out_channels or dim/dim_mults, not both")
            rest = {k: v for k, v in d.items() if k not in ("dim", "dim_mults")}
            return cls.from_dims(d.get("dim", 64), d.get("dim_mults", (1, 2, 4, 8)), **rest)
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "UNetConfig":
        """Translate a diffusers `unet/config.json` dict, refusing features outside the SD 1.x/2.x family."""
        for key in ("down_block_types", "up_block_types", "block_out_channels"):
            if key not in cfg:
                raise LatentDiffError(f"unet/config.json lacks the required key {key!r}")
        for key, default in _UNSUPPORTED.items():
            if cfg.get(key, default) != default:
                raise LatentDiffError(f"unsupported U-Net feature {key}={cfg[key]!r} (only SD 1.x/2.x layouts are implemented)")
        try:
            levels = tuple(_DOWN_TYPES[t] for t in cfg["down_block_types"])
            ups = tuple(_UP_TYPES[t] for t in cfg["up_block_types"])
        except KeyError as e:
            raise LatentDiffError(f"unsupported U-Net block type {e.args[0]!r}") from None
        if ups != levels[::-1]:
            raise LatentDiffError("up blocks do not mirror down blocks; this U-Net layout is not supported")
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)  # diffusers' naming quirk: SD's "head dim" is the head count
        depth = cfg.get("transformer_layers_per_block", 1)
        if not isinstance(depth, int):
            if any(not isinstance(d, int) for d in depth):
                raise LatentDiffError("nested transformer_layers_per_block (per ResNet) is not supported")
            depth = depth[0] if len(set(depth)) == 1 else tuple(depth)
        if cfg.get("reverse_transformer_layers_per_block") is not None:
            raise LatentDiffError("reverse_transformer_layers_per_block is not supported")
        return cls(
            in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
            block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg.get("layers_per_block", 2),
            attention_levels=levels, num_heads=heads if isinstance(heads, int) else tuple(heads),
            cross_attention_dim=cfg.get("cross_attention_dim", 768), transformer_depth=depth,
            use_linear_projection=cfg.get("use_linear_projection", False), norm_num_groups=cfg.get("norm_num_groups", 32),
            norm_eps=cfg.get("norm_eps", 1e-5), flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
            freq_shift=cfg.get("freq_shift", 0), upcast_attention=cfg.get("upcast_attention", False),
            sample_size=cfg.get("sample_size", 64), addition_embed_type=cfg.get("addition_embed_type"),
            addition_time_embed_dim=cfg.get("addition_time_embed_dim"),
            projection_class_embeddings_input_dim=cfg.get("projection_class_embeddings_input_dim"),
        )

    def to_folder_config(self) -> dict:
        """`unet/config.json` for a saved folder: diffusers' format when it can express the network, else ours."""
        if self.variant_settings():
            return {"_class_name": LATENTDIFF_CLASS, **self.to_dict()}
        return self.to_diffusers()

    @classmethod
    def from_folder_config(cls, cfg: dict) -> "UNetConfig":
        """Read either form of `unet/config.json` written by `to_folder_config` (or by diffusers)."""
        if cfg.get("_class_name") == LATENTDIFF_CLASS:
            return cls.from_dict({k: v for k, v in cfg.items() if not k.startswith("_")})
        return cls.from_diffusers(cfg)

    def to_diffusers(self) -> dict:
        """A diffusers `UNet2DConditionModel` config dict describing the same network (SD layouts only)."""
        if extra := self.variant_settings():
            raise LatentDiffError(f"diffusers' UNet2DConditionModel cannot express this U-Net variant ({', '.join(extra)})")
        return {
            "_class_name": "UNet2DConditionModel",
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in self.attention_levels[::-1]],
            "attention_head_dim": list(self.num_heads), "cross_attention_dim": self.cross_attention_dim,
            "transformer_layers_per_block": d if isinstance(d := self.transformer_depth, int) else list(d),
            "use_linear_projection": self.use_linear_projection,
            "norm_num_groups": self.norm_num_groups, "norm_eps": self.norm_eps, "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift, "upcast_attention": self.upcast_attention, "sample_size": self.sample_size,
            "center_input_sample": False, "act_fn": "silu", "mid_block_scale_factor": 1, "downsample_padding": 1,
            **({"addition_embed_type": "text_time", "addition_time_embed_dim": self.addition_time_embed_dim,
                "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim}
               if self.addition_embed_type else {}),
        }


class UNet(nn.Module):
    """Conditional U-Net ε/v-predictor: (noisy latents, timestep, text embeddings) → (B, out_channels, h, w)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ch0, temb_dim = c.block_out_channels[0], c.block_out_channels[0] * 4
        common = dict(context_dim=c.cross_attention_dim, groups=c.norm_num_groups, eps=c.norm_eps,
                      linear_proj=c.use_linear_projection)
        depth = c.level_depth
        self.conv_in = nn.Conv2d(c.in_channels + (c.out_channels if c.self_condition else 0), ch0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch0, temb_dim)
        if c.addition_embed_type == "text_time":  # SDXL: [pooled text, sin(size/crop numbers)] → MLP, added to temb
            self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, temb_dim)

        n = len(c.block_out_channels)
        self.down_blocks = nn.ModuleList()
        out_ch = ch0
        for i in range(n):
            in_ch, out_ch = out_ch, c.block_out_channels[i]
            self.down_blocks.append(DownBlock(in_ch, out_ch, temb_dim, layers=c.layers_per_block, attention=c.level_attention[i],
                                              heads=c.num_heads[i], downsample=i < n - 1, down_kind=c.downsample, depth=depth[i], **common))
        self.mid_block = MidBlock(c.block_out_channels[-1], temb_dim, heads=c.num_heads[-1], depth=depth[-1], **common)

        rev_ch, rev_attn, rev_heads, rev_depth = c.block_out_channels[::-1], c.level_attention[::-1], c.num_heads[::-1], depth[::-1]
        self.up_blocks = nn.ModuleList()
        out_ch = rev_ch[0]
        for i in range(n):
            prev_ch, out_ch, in_ch = out_ch, rev_ch[i], rev_ch[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(in_ch, prev_ch, out_ch, temb_dim, layers=c.layers_per_block + 1, attention=rev_attn[i],
                                          heads=rev_heads[i], upsample=i < n - 1, up_kind=c.upsample, depth=rev_depth[i],
                                          skip=c.skip_connections, **common))

        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, ch0, eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch0, c.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute block activations in the backward pass to save memory (training only)."""
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = on

    def added_embedding(self, added: dict | None, b: int) -> torch.Tensor:
        """SDXL's added embedding: pooled text (B, P) and time_ids (B, k) → (B, 4·ch0), diffusers' "text_time"."""
        if not added or "text_embeds" not in added or "time_ids" not in added:
            raise LatentDiffError("this U-Net (SDXL) needs added_cond_kwargs with 'text_embeds' and 'time_ids'")
        text, ids = added["text_embeds"], added["time_ids"]
        feats = timestep_embedding(ids.flatten(), self.config.addition_time_embed_dim, flip_sin_to_cos=self.config.flip_sin_to_cos,
                                   freq_shift=self.config.freq_shift)  # (B·k, E)
        feats = feats.reshape(text.shape[0], -1)  # (B, k·E)
        return self.add_embedding(torch.cat([text, feats.to(text.dtype)], dim=-1).to(self.dtype))  # (B, 4·ch0)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                x_self_cond: torch.Tensor | None = None, added_cond_kwargs: dict | None = None) -> torch.Tensor:
        """sample (B, C_in, h, w), timestep scalar or (B,), encoder_hidden_states (B, T, D) → (B, C_out, h, w).

        With `self_condition`, x_self_cond (B, C_out, h, w) is the previous x0 estimate (zeros when None).
        SDXL ("text_time") needs added_cond_kwargs {"text_embeds": (B, P) pooled text, "time_ids": (B, 6) numbers}.
        """
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(1).expand(b) if t.ndim == 0 else t.expand(b)
        temb = timestep_embedding(t, self.config.block_out_channels[0], flip_sin_to_cos=self.config.flip_sin_to_cos,
                                  freq_shift=self.config.freq_shift).to(sample.dtype)  # (B, ch0)
        temb = self.time_embedding(temb)  # (B, 4·ch0)
        if self.config.addition_embed_type == "text_time":
            temb = temb + self.added_embedding(added_cond_kwargs, b).to(temb.dtype)
        context = encoder_hidden_states

        if self.config.self_condition:
            if x_self_cond is None:
                x_self_cond = sample.new_zeros(b, self.config.out_channels, *sample.shape[-2:])
            sample = torch.cat([sample, x_self_cond.to(sample.dtype)], dim=1)  # (B, C_in + C_out, h, w)
        keep = self.config.skip_connections

        x = self.conv_in(sample)  # (B, ch0, h, w)
        skips, sizes = [x] if keep else [], [tuple(x.shape[-2:])]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context)
            sizes.extend(tuple(s.shape[-2:]) for s in block_skips)
            if keep:
                skips.extend(block_skips)
        x = self.mid_block(x, temb, context)
        for i, block in enumerate(self.up_blocks):
            n_skip = len(block.resnets)
            level_skips = skips[-n_skip:] if keep else []
            if keep:
                del skips[-n_skip:]
            del sizes[-n_skip:]
            size = sizes[-1] if sizes else None  # upsample to the next skip's size (odd sides)
            x = block(x, level_skips, temb, context, upsample_size=size)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x
