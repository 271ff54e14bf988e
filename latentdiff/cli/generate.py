"""`latentdiff generate` and `latentdiff info`."""

from __future__ import annotations

import sys

from ..checkpoints.loader import resolve_model
from ..errors import LatentDiffError
from .control import add_control_args, control_units
from .common import (add_model_args, add_sampling_args, check_request, check_runtime, load_pipeline, output_paths,
                     save_outputs)

def add_generate_parsers(sub) -> None:
    """`generate` (a prompt, or --replay PNG) and `info` (a model or a LoRA file)."""
    g = sub.add_parser("generate", help="draw images from a prompt")
    g.add_argument("prompt", nargs="?", default=None, help='the prompt ("" for unconditional)')
    g.add_argument("--replay", metavar="PNG", help="draw again the image a PNG (ours or A1111's) was made with; flags override its settings")
    add_model_args(g)
    add_sampling_args(g)
    g.add_argument("--refiner", metavar="PATH", help="SDXL refiner (folder or file) that finishes the base's image")
    g.add_argument("--refiner-switch", type=float, default=0.8, metavar="F",
                   help="fraction of the schedule the base runs before the refiner takes over (default 0.8)")
    h = g.add_argument_group("hires fix (A1111's: draw at the base size, upscale, redraw as img2img)")
    h.add_argument("--hires-scale", type=float, default=None, help="turn the hires fix on: final size = base × SCALE (A1111's Hires upscale)")
    h.add_argument("--hires-steps", type=int, default=0, help="second-pass steps (default 0: as many as --steps)")
    h.add_argument("--hires-strength", type=float, default=0.7, help="second-pass denoising strength (default 0.7)")
    h.add_argument("--hires-upscaler", default="latent", help="latent (bilinear), latent_nearest, latent_nearest_exact, "
                   "latent_bicubic, lanczos (decoded image, re-encoded) or nearest")
    add_control_args(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a model (architecture, native size, sampling defaults) or a LoRA file")
    i.add_argument("path", nargs="?", help="model folder, checkpoint or LoRA file (default: the embedded model)")
    i.add_argument("--allow-pickle", action="store_true")
    i.set_defaults(func=cmd_info)


def cmd_generate(args) -> int:
    from ..pipelines.png_metadata import GenerationParams
    from ..pipelines.replay import apply_replay
    from ..pipelines import LatentDiffusionPipeline

    for line in apply_replay(args, "generate")[0] if args.replay else []:  # the PNG's settings unless a flag overrides
        print(line, file=sys.stderr)
    if args.prompt is None:
        raise LatentDiffError("give a prompt (\"\" for unconditional) or --replay IMAGE.png")
    p = GenerationParams(prompt=args.prompt, negative_prompt=args.negative,  # None: the model's default (pipe.sampling_settings)
                         steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance,
                         seed=args.seed, width=args.width, height=args.height, guidance_rescale=args.guidance_rescale,
                         clip_skip=args.clip_skip, schedule=args.schedule or "automatic")
    num = args.num
    check_request(p, num)
    check_runtime(args)
    hires = None
    if args.hires_scale is not None:
        from ..pipelines.hires import HiresFix

        hires = HiresFix(args.hires_scale, args.hires_steps, args.hires_strength, args.hires_upscaler)
    controls = control_units(args)
    paths = output_paths(args.out, num)
    pipe = load_pipeline(args)
    xl = {}
    if args.refiner:  # SDXL base → refiner hand-off (pipelines.text_to_image.refine checks both are SDXL)
        from ..pipelines.sdxl import check_switch

        xl = dict(refiner_switch=check_switch(args.refiner_switch),
                  refiner=LatentDiffusionPipeline.from_pretrained(args.refiner, device=args.device, dtype=args.dtype,
                                                                  attention=args.attention, allow_pickle=args.allow_pickle))
    draw = pipe
    if hires is not None:
        from functools import partial

        from ..pipelines.hires import hires_fix

        draw = partial(hires_fix, pipe, hires=hires)
    out = draw(p.prompt, p.negative_prompt, num_inference_steps=p.steps, guidance_scale=p.guidance_scale, sampler=p.sampler,
               seed=p.seed, height=p.height, width=p.width, num_images=num, guidance_rescale=p.guidance_rescale,
               clip_skip=p.clip_skip, schedule=p.schedule, controls=controls, **xl)
    return save_outputs(out, paths)


def cmd_info(args) -> int:
    from ..checkpoints import load_components
    from ..defaults import GENERATION_CONFIG, SAMPLING_DEFAULTS
    from ..lora.io import describe_lora, is_lora_file

    if args.path and is_lora_file(args.path):
        print("\n".join(describe_lora(args.path)))
        return 0
    c = load_components(resolve_model(args.path), allow_pickle=args.allow_pickle)
    u = c.unet.config

    def count(m) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M"

    def dtypes(m) -> str:
        return ",".join(sorted({str(p.dtype).replace("torch.", "") for p in m.parameters()}))

    print(f"model            {c.source}")
    family = {"sdxl": "SDXL base", "sdxl_refiner": "SDXL refiner", "sdxl_inpaint": "SDXL"}.get(c.kind, c.kind.upper())
    print(f"layout           {family}{' inpainting' if u.in_channels == 9 else ''}")
    print(f"prediction type  {c.prediction_type}")
    print(f"U-Net            {count(c.unet)} params, {dtypes(c.unet)}; channels {list(u.block_out_channels)}, "
          f"{u.layers_per_block} blocks/level, attention {['yes' if a else 'no' for a in u.attention_levels]}, "
          f"heads {list(u.num_heads)}, context {u.cross_attention_dim}, in {u.in_channels} → out {u.out_channels}")
    if c.is_sdxl:
        numbers = (u.projection_class_embeddings_input_dim - c.text_encoder_2.config.projection_dim) // u.addition_time_embed_dim
        print(f"SDXL             transformer depth {[d if a else 0 for d, a in zip(u.level_depth, u.attention_levels)]}, added embedding: pooled text + {numbers} "
              f"micro-conditioning numbers{' (with aesthetic score)' if numbers == 5 else ''}; "
              f"empty negative → zeros: {'yes' if c.extra.get('force_zeros_for_empty_prompt') else 'no'}")
    v = c.vae.config
    print(f"VAE              {count(c.vae)} params, {dtypes(c.vae)}; {2 ** (len(v.block_out_channels) - 1)}× down, "
          f"{v.latent_channels} latent channels, scaling {v.scaling_factor}")
    for label, enc in (("text encoder  ", c.text_encoder), ("text encoder 2", c.text_encoder_2)):  # SDXL: CLIP-L + bigG
        if enc is not None:
            t = enc.config
            proj = f", pooled projection {t.projection_dim}" if label.strip().endswith("2") else ""
            print(f"{label}   {count(enc)} params, {dtypes(enc)}; {t.num_hidden_layers} layers, width {t.hidden_size}{proj}")
    print(f"scheduler        {c.scheduler_config.get('_class_name', '?')}, {c.scheduler_config.get('beta_schedule', '?')}")
    side = u.sample_size * 2 ** (len(v.block_out_channels) - 1)
    print(f"native size      {side}×{side}")
    d = {**SAMPLING_DEFAULTS, **c.generation}
    print(f"sampling         {d['num_inference_steps']} steps, guidance {d['guidance_scale']:g}, {d['sampler']} "
          f"({GENERATION_CONFIG if c.generation else 'library defaults: the model sets none'})")
    return 0
