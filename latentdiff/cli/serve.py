"""`latentdiff serve`: parse the flags, check the security rules, start uvicorn around the app."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ..errors import LatentDiffError
from .common import add_device_args


def add_serve_parser(sub) -> None:
    """Register `serve` on the CLI's subparsers."""
    s = sub.add_parser("serve", help="keep a model warm behind A1111's web API and a page at /")
    s.add_argument("--model", help="diffusers folder or .safetensors file loaded first (default: the embedded model)")
    s.add_argument("--models-dir", help="folder of diffusers folders and .safetensors files clients may switch to")
    s.add_argument("--lora-dir", help="folder of .safetensors LoRAs for <lora:name:weight> in prompts")
    s.add_argument("--controlnet-dir", help="folder of ControlNets (diffusers folders, .safetensors) for alwayson_scripts.controlnet")
    s.add_argument("--embeddings-dir", help="folder of .safetensors textual-inversion embeddings, used by name in prompts")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--api-auth", metavar="USER:PASS", help="require HTTP basic auth (needed to bind beyond loopback)")
    s.add_argument("--insecure", action="store_true", help="allow binding beyond loopback without --api-auth")
    add_device_args(s)
    s.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, pw = text.partition(":")
    if not sep or not user or not pw:
        raise LatentDiffError("--api-auth must be USER:PASS with both parts non-empty")
    return user, pw


def check_serve_args(args) -> tuple[str | None, str | None]:
    """Security rules and folder checks before anything loads; returns (model path, default model path)."""


    if not is_loopback(args.host) and not args.api_auth and not args.insecure:
        raise LatentDiffError(f"binding {args.host} exposes the server to the network: give --api-auth USER:PASS "
                              "(or --insecure to serve without a password)")
    parse_auth(args.api_auth)
    if not 0 < args.port < 65536:
        raise LatentDiffError(f"--port must be in 1..65535, got {args.port}")
    for flag, d in (("--models-dir", args.models_dir), ("--lora-dir", args.lora_dir), ("--controlnet-dir", args.controlnet_dir),
                    ("--embeddings-dir", getattr(args, "embeddings_dir", None))):
        if d is not None and not Path(d).is_dir():
            raise LatentDiffError(f"{flag} is not a folder: {d}")
    if args.model and not Path(args.model).exists():
        raise LatentDiffError(f"no such model: {args.model}")
    from ..checkpoints.loader import ASSETS

    default = ASSETS / "default"
    default_path = str(default) if (default / "model_index.json").is_file() else None
    if not (args.model or args.models_dir or default_path):
        raise LatentDiffError("no --model or --models-dir given and the embedded default model is not in this install")
    return args.model, default_path


def cmd_serve(args) -> int:
    """Run the server until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise LatentDiffError("serve needs fastapi and uvicorn: pip install fastapi uvicorn") from None
    from ..server.app import create_app, loopback_hosts
    from ..server.worker import Catalog

    model, default_path = check_serve_args(args)
    catalog = Catalog(model, args.models_dir, args.lora_dir, default_path, controlnet_dir=args.controlnet_dir,
                      embeddings_dir=args.embeddings_dir)
    asgi = create_app(catalog, allowed_hosts=loopback_hosts(args.host, args.port), auth=parse_auth(args.api_auth),
                      device=args.device, dtype=args.dtype)
    print(f"latentdiff serve: http://{args.host}:{args.port}/ (model {catalog.first}; A1111 API at /sdapi/v1)", flush=True)
    uvicorn.run(asgi, host=args.host, port=args.port, log_level="warning")
    return 0
