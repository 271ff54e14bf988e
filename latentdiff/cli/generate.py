"""`latentdiff generate` and `latentdiff info`."""

from __future__ import annotations

import sys

from ..checkpoints.loader import resolve_model
from ..errors import LatentDiffError
from .control import add_control_args, control_units
from .common import (add_model_args, add_sampling_args, check_request, check_runtime, output_paths, report_fast,
                     save_outputs)

def add_generate_parsers(sub) -> None:
    """`generate` (a prompt, or --replay PNG) and `info` (a model or a LoRA file)."""
    g = sub.add_parser("generate", help="draw images from a prompt")
    g.add_argument("prompt", nargs="?", default=None, help='the prompt ("" for unconditional)')
    g.add_argument("--replay", metavar="PNG", help="draw again the image a PNG (ours or A1111's) was made with; flags override its settings")
    add_model_args(g)
    add_sampling_args(g)
    add_control_args(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a model (architecture, native size, sampling defaults) or a LoRA file")
    i.add_argument("path", nargs="?", help="model folder, checkpoint or LoRA file (default: the embedded model)")
    i.add_argument("--allow-pickle", action="store_true")
    i.set_defaults(func=cmd_info)


def cmd_generate(args) -> int:
    from ..pipelines.params import GenerationParams
    from ..pipelines.replay import apply_replay
    from ..pipelines.text_to_image import LatentDiffusionPipeline

    for line in apply_replay(args, "generate")[0] if args.replay else []:  # the PNG's settings unless a flag overrides
        print(line, file=sys.stderr)
    if args.prompt is None:
        raise LatentDiffError("give a prompt (\"\" for unconditional) or --replay IMAGE.png")
    p = GenerationParams(prompt=args.prompt, negative_prompt=args.negative,  # None: the model's default (pipe.sampling_settings)
                         steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance,
                         seed=args.seed, width=args.width, height=args.height, guidance_rescale=args.guidance_rescale,
                         clip_skip=args.clip_skip)
    model, loras = args.model, args.lora
    num = args.num
    check_request(p, num)
    check_runtime(args)
    controls = control_units(args)
    paths = output_paths(args.out, num)
    pipe = LatentDiffusionPipeline.from_pretrained(resolve_model(model), device=args.device, dtype=args.dtype,
                                                   attention=args.attention, allow_pickle=args.allow_pickle,
                                                   fast=args.fast, compile=args.compile,
                                                   prediction_type=args.prediction_type)
    report_fast(pipe, args)
    if model in (None, "default"):
        pipe.model_name = "default"
    for path, weight in loras:
        pipe.load_lora(path, weight=weight)
    out = pipe(p.prompt, p.negative_prompt, num_inference_steps=p.steps, guidance_scale=p.guidance_scale, sampler=p.sampler,
               seed=p.seed, height=p.height, width=p.width, num_images=num, guidance_rescale=p.guidance_rescale,
               clip_skip=p.clip_skip, controls=controls)
    return save_outputs(out, paths)


def cmd_info(args) -> int:
    from ..checkpoints import load_components
    from ..checkpoints.loader import GENERATION_CONFIG, SAMPLING_DEFAULTS
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
    print(f"layout           {c.kind.upper()}{' inpainting' if u.in_channels == 9 else ''}")
    print(f"prediction type  {c.prediction_type}")
    print(f"U-Net            {count(c.unet)} params, {dtypes(c.unet)}; channels {list(u.block_out_channels)}, "
          f"{u.layers_per_block} blocks/level, attention {['yes' if a else 'no' for a in u.attention_levels]}, "
          f"heads {list(u.num_heads)}, context {u.cross_attention_dim}, in {u.in_channels} → out {u.out_channels}")
    v = c.vae.config
    print(f"VAE              {count(c.vae)} params, {dtypes(c.vae)}; {2 ** (len(v.block_out_channels) - 1)}× down, "
          f"{v.latent_channels} latent channels, scaling {v.scaling_factor}")
    t = c.text_encoder.config
    print(f"text encoder     {count(c.text_encoder)} params, {dtypes(c.text_encoder)}; {t.num_hidden_layers} layers, width {t.hidden_size}")
    print(f"scheduler        {c.scheduler_config.get('_class_name', '?')}, {c.scheduler_config.get('beta_schedule', '?')}")
    side = u.sample_size * 2 ** (len(v.block_out_channels) - 1)
    print(f"native size      {side}×{side}")
    d = {**SAMPLING_DEFAULTS, **c.generation}
    print(f"sampling         {d['num_inference_steps']} steps, guidance {d['guidance_scale']:g}, {d['sampler']} "
          f"({GENERATION_CONFIG if c.generation else 'library defaults: the model sets none'})")
    return 0
