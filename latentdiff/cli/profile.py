"""`latentdiff profile CONFIG...`: one table of parameters, FLOPs, latency and memory for a set of architectures."""

from __future__ import annotations

from .common import add_renamed


def add_profile_parser(sub) -> None:
    """Register the `profile` subcommand."""
    p = sub.add_parser("profile", help="profile U-Net/DiT architectures: params, FLOPs, latency, peak memory",
                       description="Profile architectures given as YAML (configs/unet-*.yaml, latentdiff/checkpoints/presets/sd15.yaml, ...).")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML with a 'unet:' or 'dit:' section")
    p.add_argument("--batch", type=int, default=1, help="samples per forward (default 1)")
    p.add_argument("--size", type=int, default=None, help="latent side (default: each config's sample_size)")
    p.add_argument("--tokens", type=int, default=77, help="text tokens (default 77)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per config, taken in turns; the median is reported (default 5)")
    # Unlike the drawing commands (auto), profile defaults to cpu and fp32: a table of latencies is compared with tables
    # made on other days and machines, so what it runs on must be chosen, never picked from the hardware.
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu, not auto as elsewhere: tables made "
                                                   "anywhere compare like with like; say --device cuda to time a GPU)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (default fp32, not auto as elsewhere, for the same reason)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--flops-only", action="store_true", help="parameters and FLOPs only, on the meta device (instant)")
    p.add_argument("--out", metavar="PATH", help="write the raw results to this JSON file (as eval and bench)")
    add_renamed(p, "--json", "--out", "out")
    p.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    p.add_argument("--chart", metavar="PATH", help="write a PNG chart of latency vs FLOPs")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    import torch

    from ..errors import LatentDiffError
    from ..profiling import ProfileSettings, latency_chart, load_arch_config, profile_many, to_markdown, write_json, write_text_atomic

    settings = ProfileSettings(batch=args.batch, size=args.size, tokens=args.tokens, warmup=args.warmup, repeats=args.repeats,
                               device=args.device, dtype=args.dtype, latency=not args.flops_only)
    if args.chart and args.flops_only:
        raise LatentDiffError("--chart needs latencies; drop --flops-only")
    if args.threads is not None:
        if args.threads < 1:
            raise LatentDiffError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    specs = [load_arch_config(path) for path in args.configs]  # every file checked before anything runs
    rows = profile_many(specs, settings, progress=len(specs) > 1)  # latencies timed in turns across configs
    table = to_markdown(rows)
    print(table, end="")
    if args.markdown:
        write_text_atomic(args.markdown, table)
    if args.out:
        write_json(rows, settings, args.out)
    if args.chart:
        latency_chart(rows, args.chart)
    return 0
