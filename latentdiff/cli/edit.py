"""The `img2img` and `inpaint` subcommands: parsers and runners."""

from __future__ import annotations

import argparse
from types import SimpleNamespace


def add_edit_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `img2img` and `inpaint` to the main parser's subparsers."""
    from .common import add_model_args, add_sampling_args
    from .control import add_control_args

    i = subparsers.add_parser("img2img", help="redraw an image under a prompt",
                              description="Encode IMAGE with the VAE, noise it to --strength, denoise it under PROMPT.")
    i.add_argument("prompt", nargs="?", default=None, help='the prompt ("" for unconditional)')
    i.add_argument("--image", required=True, metavar="PNG", help="input picture (sides are rounded to multiples of 8)")
    i.add_argument("--replay", metavar="PNG", help="draw again an img2img PNG from --image, the input it was made from")
    i.add_argument("--strength", type=float, default=0.75,
                   help="share of the schedule re-run, in (0, 1]: low keeps the input, 1 redraws (default 0.75)")
    add_model_args(i)
    add_sampling_args(i)
    add_control_args(i)
    i.set_defaults(func=cmd_img2img)

    p = subparsers.add_parser("inpaint", help="repaint the white part of a mask",
                              description="Repaint where MASK is white, keep where it is black; works with 9-channel "
                                          "inpainting models and, by latent blending, with ordinary ones.")
    p.add_argument("prompt", nargs="?", default=None, help='the prompt ("" for unconditional)')
    p.add_argument("--image", required=True, metavar="PNG", help="input picture (sides are rounded to multiples of 8)")
    p.add_argument("--mask", required=True, metavar="PNG", help="mask of the image's size: white repaints, black keeps")
    p.add_argument("--replay", metavar="PNG", help="draw again an inpaint PNG from the --image and --mask it was made from")
    p.add_argument("--mask-threshold", type=float, default=0.5,
                   help="gray/255 at or above which a mask pixel repaints (default 0.5, i.e. 128 and up)")
    p.add_argument("--mask-blur", type=float, default=0.0, metavar="PX",
                   help="feather the paste-back edge with a Gaussian of this σ in pixels (default 0)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false",
                   help="do not paste the input back outside the mask (gives diffusers' output)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="share of the schedule re-run, in (0, 1] (default 1: the masked region starts from noise)")
    add_model_args(p)
    add_sampling_args(p)
    add_control_args(p)
    p.set_defaults(func=cmd_inpaint)


def _apply_replay(args, mode: str) -> dict[str, str]:
    """--replay PNG: the PNG's settings unless a flag overrides them (latentdiff.pipelines.replay); the input hashes to check."""
    import sys

    from ..errors import LatentDiffError
    from ..pipelines.replay import apply_replay

    if args.replay is None:
        if args.prompt is None:
            raise LatentDiffError("give a prompt (\"\" for unconditional) or --replay IMAGE.png")
        return {}
    lines, expected = apply_replay(args, mode)
    for line in lines:
        print(line, file=sys.stderr)
    return expected


def _check_inputs(replay: str | None, expected: dict[str, str], actual: dict[str, str]) -> None:
    """The inputs given must be the ones the replayed PNG was drawn from (sha256[:10] as recorded)."""
    from ..errors import LatentDiffError

    for what, sha in actual.items():
        if expected.get(what) and expected[what] != sha:
            raise LatentDiffError(f"--{what} has sha256 {sha}, but {replay} was drawn from one with {expected[what]}; "
                                  f"give the {what} it was made from")


def _sampling(args) -> SimpleNamespace:
    """The sampling settings with their defaults, checked before any model loads."""
    from .common import check_request, check_runtime

    s = SimpleNamespace(steps=args.steps, sampler=args.sampler, guidance=args.guidance,  # None: the model's default
                        width=args.width, height=args.height, seed=args.seed, guidance_rescale=args.guidance_rescale,
                        clip_skip=args.clip_skip, schedule=args.schedule or "automatic")
    check_request(s, args.num)
    check_runtime(args)
    return s


def _save(out, paths) -> int:
    from .common import save_outputs

    return save_outputs(out, paths)


def cmd_img2img(args) -> int:
    from .common import load_pipeline, output_paths
    from .control import control_units
    from ..pipelines.image_latents import check_strength
    from ..pipelines.images import load_image

    expected = _apply_replay(args, "img2img")
    s = _sampling(args)
    strength = check_strength(args.strength)
    init = load_image(args.image, args.width, args.height)
    _check_inputs(args.replay, expected, {"image": init.sha})
    controls = control_units(args)
    paths = output_paths(args.out, args.num)
    pipe = load_pipeline(args)
    out = pipe.img2img(args.prompt, init, args.negative, strength=strength, num_inference_steps=s.steps,
                       guidance_scale=s.guidance, sampler=s.sampler, seed=args.seed, num_images=args.num,
                       guidance_rescale=args.guidance_rescale, clip_skip=args.clip_skip, schedule=args.schedule or "automatic",
                       controls=controls)
    return _save(out, paths)


def cmd_inpaint(args) -> int:
    from .common import load_pipeline, output_paths
    from .control import control_units
    from ..errors import LatentDiffError
    from ..pipelines.image_latents import check_strength
    from ..pipelines.images import load_image, load_mask
    from ..pipelines.inpaint import check_mask_blur

    expected = _apply_replay(args, "inpaint")
    s = _sampling(args)
    strength = check_strength(args.strength)
    if args.mask_blur < 0:
        raise LatentDiffError(f"--mask-blur must be ≥ 0 pixels, got {args.mask_blur:g}")
    if args.mask_blur and not args.overlay:
        raise LatentDiffError("--mask-blur feathers the paste-back of the input; it has no effect with --no-overlay")
    init = load_image(args.image, args.width, args.height)
    check_mask_blur(args.mask_blur, *init.size)
    mask = load_mask(args.mask, init, args.mask_threshold)
    _check_inputs(args.replay, expected, {"image": init.sha, "mask": mask.sha})
    controls = control_units(args)
    paths = output_paths(args.out, args.num)
    pipe = load_pipeline(args)
    out = pipe.inpaint(args.prompt, init, mask, args.negative, strength=strength, mask_blur=args.mask_blur,
                       overlay_original=args.overlay, num_inference_steps=s.steps, guidance_scale=s.guidance,
                       sampler=s.sampler, seed=args.seed, num_images=args.num, guidance_rescale=args.guidance_rescale,
                       clip_skip=args.clip_skip, schedule=args.schedule or "automatic",
                       controls=controls)
    return _save(out, paths)
