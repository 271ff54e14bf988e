"""ControlNet flags shared by generate, img2img and inpaint: `--control PATH:IMAGE[:WEIGHT[:START:END]]` and friends,
checked before any model loads, and their replay from a PNG's recorded units (control images hash-checked)."""

from __future__ import annotations

import argparse
import math
import sys

from ..errors import LatentDiffError

MODULES = ("none", "invert", "canny", "softedge", "threshold", "scribble")  # pipelines.control_images.MODULES


def _control_arg(text: str) -> tuple[str, str, float, float, float]:
    """`PATH:IMAGE[:WEIGHT[:START:END]]` → (path, image, weight, start, end)."""
    parts = text.split(":")
    if len(parts) not in (2, 3, 5) or not all(parts[:2]):
        raise argparse.ArgumentTypeError(f"--control {text!r}: give PATH:IMAGE, PATH:IMAGE:WEIGHT or PATH:IMAGE:WEIGHT:START:END "
                                         "(paths may not contain ':')")
    try:
        nums = [float(v) for v in parts[2:]]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--control {text!r}: weight, start and end must be numbers") from None
    if not all(math.isfinite(v) for v in nums):
        raise argparse.ArgumentTypeError(f"--control {text!r}: weight, start and end must be finite")
    weight, start, end = (nums + [1.0, 0.0, 1.0][len(nums):]) if len(nums) < 3 else nums
    return parts[0], parts[1], weight, start, end


def _thresholds(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        return float(low), float(high) if sep else 200.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"--control-thresholds {text!r}: give LOW[:HIGH], e.g. 100:200") from None


def add_control_args(p: argparse.ArgumentParser) -> None:
    """The ControlNet flags (repeatable: the i-th --control-module/--control-resize/--control-thresholds go with the
    i-th --control; one given applies to all)."""
    g = p.add_argument_group("ControlNet")
    g.add_argument("--control", action="append", default=[], type=_control_arg, metavar="PATH:IMAGE[:WEIGHT[:START:END]]",
                   help="ControlNet (diffusers folder, or A1111/lllyasviel .safetensors; .pth with --allow-pickle) and its "
                        "control image; WEIGHT is its conditioning scale (1), START:END the fraction of the steps it acts "
                        "on (0:1); repeatable for several ControlNets")
    g.add_argument("--control-module", action="append", default=[], choices=MODULES,
                   help="preprocessor making the control map from IMAGE (default none: IMAGE is the map). Pose and depth "
                        "estimators need downloaded weights we do not ship: give OpenPose/depth maps made elsewhere with none")
    g.add_argument("--control-resize", action="append", default=[], choices=("just", "crop", "fill"),
                   help="how IMAGE is fitted to the output size, as A1111: just (stretch), crop (Crop and Resize, default), "
                        "fill (Resize and Fill)")
    g.add_argument("--control-thresholds", action="append", default=[], type=_thresholds, metavar="LOW[:HIGH]",
                   help="canny's thresholds (default 100:200); LOW is threshold's cut")
    g.add_argument("--control-guess", action="store_true",
                   help="guess mode: ControlNets act on the conditional branch only, scaled 0.1 → 1 from the first skip to the middle")


def _per_unit(values: list, n: int, flag: str, default):
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise LatentDiffError(f"{len(values)} {flag} for {n} --control; give one for all or one per --control")
    return values


def control_units(args) -> list:
    """ControlUnits from the flags (or from --replay's PNG), their files checked before any model loads."""
    from pathlib import Path

    from ..pipelines.control import ControlUnit

    recorded = _replayed(args)
    if recorded is not None and not args.control:
        return recorded
    n = len(args.control)
    if not n:
        for flag in ("control_module", "control_resize", "control_thresholds"):
            if getattr(args, flag):
                raise LatentDiffError(f"--{flag.replace('_', '-')} needs a --control")
        return []
    modules = _per_unit(args.control_module, n, "--control-module", "none")
    resizes = _per_unit(args.control_resize, n, "--control-resize", "crop")
    thresholds = _per_unit(args.control_thresholds, n, "--control-thresholds", (100.0, 200.0))
    units = []
    for (path, image, weight, start, end), module, resize, (low, high) in zip(args.control, modules, resizes, thresholds):
        for what, f in (("ControlNet", path), ("control image", image)):
            if not Path(f).exists():
                raise LatentDiffError(f"no such {what}: {f}")
        unit = ControlUnit(path, image, weight, start, end, module, resize, args.control_guess, low, high)
        unit.check()
        units.append(unit)
    return units


def _replayed(args) -> list | None:
    """The units a replayed latentdiff PNG records, found next to it or here; None when not replaying any.

    Control images must be the recorded ones (sha256[:10]), whether found or given with --control; a ControlNet
    file with another hash is a warning."""
    if not getattr(args, "replay", None):
        return None
    from ..hashes import model_hash
    from ..pipelines.control import unit_from_record
    from ..pipelines.images import open_image
    from ..pipelines.replay import find_file, read_replay

    src = read_replay(args.replay)
    records = src.params.controls if src.origin == "latentdiff" else []
    if not records:
        return None
    given = args.control
    if given and len(given) != len(records):
        raise LatentDiffError(f"{args.replay} was drawn with {len(records)} ControlNets; give as many --control or none")
    units = []
    for i, rec in enumerate(records):
        model = given[i][0] if given else find_file(rec["model"], src.png)
        image = given[i][1] if given else find_file(rec["image"], src.png)
        if model is None or image is None:
            missing = rec["model"] if model is None else rec["image"]
            raise LatentDiffError(f"{missing}, which {args.replay} was drawn with, is not there, nor next to the PNG, nor in "
                                  f"the current folder; give --control PATH:IMAGE")
        sha = open_image(image, "control image")[1]
        if sha != rec["image_hash"]:
            raise LatentDiffError(f"control image {image} has sha256 {sha}, but {args.replay} was drawn from one with "
                                  f"{rec['image_hash']}; give the control image it was made from")
        if rec.get("model_hash") and model_hash(model)[:8] != rec["model_hash"]:
            print(f"warning: ControlNet {model} has hash {model_hash(model)[:8]}, the PNG recorded {rec['model_hash']}; "
                  "the picture may differ", file=sys.stderr)
        units.append(unit_from_record(rec, str(model), str(image)))
    return units
