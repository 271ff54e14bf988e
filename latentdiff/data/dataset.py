"""Image-caption datasets: folder scanning, varied captions, resizing and aspect buckets.

A dataset folder is either of the two common conventions, freely mixed, in the folder itself and in
its immediate sub-folders (one level, so kohya's ``10_name/`` folders work):

* image folder: images plus ``metadata.jsonl`` lines ``{"file_name": ..., "text": ..., ...}``;
  optional fields ``tags`` (list or comma-separated string), ``split`` ("train" | "holdout"),
  ``group``, ``subgroup``, ``style`` (e.g. "3d", "noto flat": captions name it, see CaptionSampler);
* kohya: ``name.png`` plus ``name.txt`` holding the caption.

An optional ``holdout.txt`` in the root lists file names (first tab-separated column, ``#`` comments)
that belong to the held-out split when a metadata line gives no ``split`` of its own.

Images without a caption are skipped and counted, not trained on with an empty caption: an empty
caption is what classifier-free-guidance dropout produces, and silently adding more of it would shift
that rate. Unreadable images are skipped and counted at scan time (open + verify). Both are reported
once, as one warning line.

Random horizontal flip is off by default: emoji and many captioned images carry direction in their
meaning ("left arrow", "person walking facing right", keycaps and letters), and a flip would make
the caption false.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from latentdiff.errors import LatentDiffError
from latentdiff.imaging import WHITE, flatten_alpha, to_tensor

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "holdout")


@dataclass(frozen=True)
class Record:
    """One captioned image found by a scan."""

    path: Path                      # the image file
    text: str                       # the caption (CLDR label for the emoji set)
    tags: tuple[str, ...] = ()      # extra keywords that captions may append
    split: str = "train"            # "train" or "holdout"
    size: tuple[int, int] = (0, 0)  # (width, height), read at scan time
    group: str | None = None        # coarse class, e.g. emoji group "animals-nature"
    subgroup: str | None = None     # finer class, e.g. "animal-mammal"
    style: str | None = None        # image style for captions, e.g. "3d", "noto flat"; None: the default style


@dataclass
class ScanReport:
    """What a scan found and what it skipped."""

    images: int = 0                                      # records kept
    unreadable: int = 0                                  # failed open + verify
    uncaptioned: int = 0                                 # no metadata line and no .txt (or empty text)
    missing: int = 0                                     # metadata lines naming absent files
    examples: list[str] = field(default_factory=list)    # a few skipped paths with the reason

    @property
    def skipped(self) -> int:
        """Images or lines skipped for any reason."""
        return self.unreadable + self.uncaptioned + self.missing

    def summary(self) -> str:
        """One line: kept and skipped counts with up to three examples."""
        line = (f"{self.images} images; skipped {self.unreadable} unreadable, "
                f"{self.uncaptioned} without caption, {self.missing} missing files")
        return line + (" (e.g. " + "; ".join(self.examples[:3]) + ")" if self.examples else "")

    def _skip(self, kind: str, path: Path) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{path.name}: {kind}")


def _parse_tags(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(t).strip() for t in value if str(t).strip())


def _parse_style(value: object, meta: Path, n: int) -> str | None:
    """A metadata line's "style": absent → None, a non-empty string → stripped, anything else → error."""
    if value is None or (isinstance(value, str) and value.strip()):
        return value.strip() if isinstance(value, str) else None
    raise LatentDiffError(f"{meta}:{n}: style must be a non-empty string, got {value!r}")


def _read_holdout(root: Path) -> set[str]:
    path = root / "holdout.txt"
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("\t")[0].strip()
        if name and not name.startswith("#"):
            names.add(name)
    return names


def _metadata_candidates(folder: Path, root: Path, holdout: set[str]) -> list[tuple[Path, dict]]:
    meta = folder / "metadata.jsonl"
    out = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LatentDiffError(f"{meta}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise LatentDiffError(f"{meta}:{n}: each line needs a \"file_name\" string")
        if Path(row["file_name"]).is_absolute():
            raise LatentDiffError(f"{meta}:{n}: file_name must be relative to the folder, got {row['file_name']!r}")
        path = Path(os.path.normpath(folder / row["file_name"]))
        split = row.get("split") or ("holdout" if Path(os.path.relpath(path, root)).as_posix() in holdout else "train")
        if split not in SPLITS:
            raise LatentDiffError(f"{meta}:{n}: split must be one of {SPLITS}, got {split!r}")
        out.append((path, {"text": row.get("text", row.get("caption")), "tags": _parse_tags(row.get("tags")),
                           "split": split, "group": row.get("group"), "subgroup": row.get("subgroup"),
                           "style": _parse_style(row.get("style"), meta, n)}))
    return out


def _verify(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        return size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def scan_folder(root: str | Path, *, progress: bool = True) -> tuple[list[Record], ScanReport]:
    """Find captioned images under root (and one level down); skip and count the unusable ones."""
    root = Path(root)
    if not root.is_dir():
        raise LatentDiffError(f"dataset folder not found: {root}")
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    holdout = _read_holdout(root)
    report = ScanReport()
    candidates: dict[Path, dict] = {}
    for folder in folders:
        if (folder / "metadata.jsonl").is_file():
            for path, info in _metadata_candidates(folder, root, holdout):
                candidates.setdefault(path, info)
    for path in list(candidates):
        if not path.is_file():
            del candidates[path]
            report._skip("missing", path)
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or path in candidates or not path.is_file():
                continue
            txt = path.with_suffix(".txt")
            text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
            split = "holdout" if path.relative_to(root).as_posix() in holdout else "train"
            candidates[path] = {"text": text, "tags": (), "split": split, "group": None, "subgroup": None,
                               "style": None}
    if not candidates and not report.missing:
        raise LatentDiffError(f"no images in {root} (expected images with metadata.jsonl or same-stem .txt captions)")

    records = []
    for path in tqdm(sorted(candidates), desc="scan images", unit="img", disable=None if progress else True):
        info = candidates[path]
        if not isinstance(info["text"], str) or not info["text"].strip():
            report._skip("uncaptioned", path)
            continue
        size = _verify(path)
        if size is None:
            report._skip("unreadable", path)
            continue
        records.append(Record(path=path, text=info["text"].strip(), tags=info["tags"], split=info["split"],
                              size=size, group=info["group"], subgroup=info["subgroup"], style=info["style"]))
    report.images = len(records)
    if report.skipped:
        log.warning("dataset %s: %s", root, report.summary())
    if not records:
        raise LatentDiffError(f"no usable images in {root}: {report.summary()}")
    return records, report


EMOJI_TEMPLATES = (  # "{style}" is the record's style ("3d" when it has none)
    "{}",
    "a {style} emoji of {}",
    "{}, {style} emoji",
    "a {style} render of {}",
    "an emoji of {}, {style} icon",
)


@dataclass(frozen=True)
class CaptionSampler:
    """Varied training captions from a record: a template around the label and style, optional tags, dropout.

    A template's "{style}" becomes the record's style (default_style when it has none). A template without
    "{style}" gets ", <style> emoji" appended for a record whose style is not the default, so a bare label
    always means the default style (Fluent 3D for the emoji set) and other styles must be asked for.
    """

    templates: tuple[str, ...] = ("{}",)  # each holds one "{}" for the label; see EMOJI_TEMPLATES
    p_tags: float = 0.3                   # chance of appending ", tag1, tag2" (shuffled subset)
    max_tags: int = 3                     # at most this many tags appended
    p_drop: float = 0.1                   # empty caption for classifier-free guidance, https://arxiv.org/abs/2207.12598
    default_style: str = "3d"             # the style a bare label stands for

    def __post_init__(self) -> None:
        if not self.templates or any(t.replace("{style}", "").count("{}") != 1 for t in self.templates):
            raise LatentDiffError("caption templates must be non-empty and each contain exactly one '{}'")
        for name in ("p_tags", "p_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LatentDiffError(f"caption {name} must be in [0, 1], got {getattr(self, name)}")

    def fill(self, template: str, record: Record) -> str:
        """One template filled with the record's label and style."""
        style = record.style or self.default_style
        if "{style}" not in template and style != self.default_style:
            template += ", {style} emoji"
        return template.replace("{style}", style).replace("{}", record.text)

    def __call__(self, record: Record, rng: random.Random) -> str:
        """A caption for record; "" with probability p_drop."""
        if rng.random() < self.p_drop:
            return ""
        caption = self.fill(rng.choice(self.templates), record)
        if record.tags and self.max_tags > 0 and rng.random() < self.p_tags:
            k = rng.randint(1, min(self.max_tags, len(record.tags)))
            caption += ", " + ", ".join(rng.sample(record.tags, k))
        return caption


def make_buckets(resolution: int, *, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets with area ≤ resolution², sides multiples of step, aspect ≤ max_ratio (kohya-like)."""
    if resolution < step or resolution % step:
        raise LatentDiffError(f"bucket resolution must be a multiple of {step}, got {resolution}")
    area = resolution * resolution
    buckets = set()
    for w in range(step, area // step + 1, step):
        h = area // w // step * step  # the tallest multiple of step that keeps w * h <= area
        if h >= step and max(w / h, h / w) <= max_ratio:
            buckets.update({(w, h), (h, w)})
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is closest (in log ratio) to an image's (width, height)."""
    log_ratio = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - log_ratio))


def resize_and_crop(image: Image.Image, size: tuple[int, int], *, rng: random.Random | None = None) -> Image.Image:
    """Scale to cover (width, height), then crop: centred, or at a random offset when rng is given."""
    w, h = size
    if image.size != size:
        scale = max(w / image.width, h / image.height)
        cover = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
        if cover != image.size:
            image = image.resize(cover, Image.Resampling.BICUBIC)
        dx, dy = image.width - w, image.height - h
        x, y = (rng.randint(0, dx), rng.randint(0, dy)) if rng else (dx // 2, dy // 2)
        image = image.crop((x, y, x + w, y + h))
    return image


class ImageCaptionDataset(Dataset):
    """Captioned images from a folder, loaded lazily: {"pixel_values": [3, H, W] in [-1, 1], "caption": str}."""

    def __init__(
        self,
        root: str | Path,
        *,
        resolution: int | None = 256,                      # square side; None keeps each image's size
        split: str | None = "train",                       # "train", "holdout" or None for all
        captions: CaptionSampler | None = None,            # None: the record's text as is
        center_crop: bool = True,                          # False: random crop offset
        random_flip: bool = False,                         # off: flips change emoji meaning
        buckets: Sequence[tuple[int, int]] | None = None,  # (w, h) targets; overrides resolution
        background: tuple[int, int, int] = WHITE,          # fill behind transparent pixels
        seed: int = 0,                                     # seeds captions, crops and flips
        progress: bool = True,                             # tqdm bar while scanning
    ):
        if split is not None and split not in SPLITS:
            raise LatentDiffError(f"split must be one of {SPLITS} or None, got {split!r}")
        records, self.report = scan_folder(root, progress=progress)
        self.records = [r for r in records if split is None or r.split == split]
        if not self.records:
            raise LatentDiffError(f"no {split!r} images in {root} ({len(records)} images in other splits)")
        self.resolution, self.captions, self.center_crop, self.random_flip = resolution, captions, center_crop, random_flip
        self.buckets = list(buckets) if buckets else None
        self.bucket_ids = [assign_bucket(r.size, self.buckets) for r in self.records] if self.buckets else None
        self.background, self.seed, self.epoch = background, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Change the draws (captions, crops, flips) for a new epoch; same epoch ⇒ same items."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def target_size(self, index: int) -> tuple[int, int] | None:
        """(width, height) this item is resized to, or None to keep its own size."""
        if self.bucket_ids is not None:
            return self.buckets[self.bucket_ids[index]]
        return (self.resolution, self.resolution) if self.resolution else None

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        try:
            with Image.open(record.path) as im:
                image = flatten_alpha(im, self.background)
                image.load()
        except OSError as e:
            raise LatentDiffError(f"cannot read image {record.path}: {e}") from None
        size = self.target_size(index)
        if size:
            image = resize_and_crop(image, size, rng=None if self.center_crop else rng)
        if self.random_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        caption = self.captions(record, rng) if self.captions else record.text
        return {"pixel_values": to_tensor(image)[0], "caption": caption}


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, each batch drawn from one aspect bucket; shuffled per epoch."""

    def __init__(self, bucket_ids: Sequence[int], batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0):
        if batch_size < 1:
            raise LatentDiffError(f"batch size must be at least 1, got {batch_size}")
        self.bucket_ids, self.batch_size, self.shuffle, self.drop_last = list(bucket_ids), batch_size, shuffle, drop_last
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        groups: dict[int, list[int]] = defaultdict(list)
        for index, bucket in enumerate(self.bucket_ids):
            groups[bucket].append(index)
        batches = []
        for bucket in sorted(groups):
            indices = groups[bucket]
            if self.shuffle:
                rng.shuffle(indices)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
