"""Build the emoji image-caption dataset from npm packages: Fluent 3D, optionally more styles.

Images: ``@lobehub/fluent-emoji-3d`` (MIT; RGBA 256×256 webp renders of Microsoft's Fluent 3D emoji, file
name = codepoint sequence), and with ``sets`` also ``emoji-datasource-google`` (Noto Color Emoji,
Apache-2.0) and ``emoji-datasource-twitter`` (Twemoji, CC-BY 4.0), 64×64 PNGs named the same way.
Captions: ``emojibase-data`` (MIT; ``en/data.json``: CLDR label, tags, group and subgroup per emoji,
skin-tone variants under ``skins``; ``meta/groups.json`` names the groups).

Sets left out: Apple's and Facebook's images (not openly licensed); OpenMoji (CC BY-SA 4.0) and Fluent
flat (``@lobehub/fluent-emoji-flat``) ship SVG only, which needs a rasteriser this builder does not
have; ``@lobehub/fluent-emoji`` holds no images (it is a React component that loads them from a CDN).

Choices, fixed so that every build is the same dataset:

* Background: transparent pixels are composited onto **white** (255, 255, 255), so a fully
  transparent pixel becomes exactly white. Images are fitted into a ``size``×``size`` white square
  (the few 256×264 renders are scaled to fit and centred).
* Matching: codepoint sequences are compared after normalisation (lower-case hex, at least four
  digits, joined by "-", FE0F variation selectors and the E007F tag terminator dropped). A render
  whose sequence is still unknown but carries skin-tone modifiers falls back to the base emoji with
  the tone names appended to its label. Renders with no label are counted and left out. Where
  several renders normalise to one sequence (the package has e.g. both "0023-fe0f-20e3" and
  "23-fe0f-20e3"), the one spelled as emojibase spells it is kept and the others are counted as
  duplicates.
* Hold-out: an emoji is held out for evaluation iff sha256 of its *base* sequence (the emojibase
  parent entry, so all skin tones of one emoji share a split) read as an integer is 0 mod 20
  (about 5%). "cat face", "cat" and "astronaut" are in training; "snake", "volcano", "OK hand" (all
  five tones) are examples of held-out emoji. Written
  as the ``split`` field of ``metadata.jsonl`` and as ``holdout.txt``.
* Styles: every metadata line has ``style`` ("3d" for Fluent 3D, "noto flat", "twemoji flat") and
  ``set``; the caption templates put the style into the caption, and a bare label means Fluent 3D.
  Hold-out is by base codepoints, so a held-out emoji is held out in every style.
* Output: ``<codepoints>.png`` for Fluent 3D and ``<set>/<codepoints>.png`` for the others, plus
  ``metadata.jsonl`` (``file_name``, ``text`` = CLDR label, ``tags``, ``group``, ``subgroup``,
  ``codepoints``, ``emoji``, ``split``, ``style``, ``set``) and the marker file ``.latentdiff-emoji``.
  Written into a temporary folder beside ``out_dir`` and renamed at the end, so a failed build leaves
  nothing half-written. ``overwrite`` replaces only a folder that holds the marker (one this builder made).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from latentdiff.data.npm import default_cache_dir, fetch_tarball, find_tarball, open_tarball
from latentdiff.errors import LatentDiffError
from latentdiff.fileio import atomic_folder
from latentdiff.imaging import WHITE, flatten_alpha

IMAGES_PACKAGE = ("@lobehub/fluent-emoji-3d", "1.1.0", "lobehub-fluent-emoji-3d")
LABELS_PACKAGE = ("emojibase-data", "17.0.0", "emojibase-data")
HOLDOUT_MODULUS = 20
DROPPED_CODEPOINTS = frozenset({"fe0f", "e007f"})  # variation selector-16, cancel tag
MARKER = ".latentdiff-emoji"  # written into every built folder; --overwrite replaces only folders holding it
SKIN_TONES = {"1f3fb": "light skin tone", "1f3fc": "medium-light skin tone", "1f3fd": "medium skin tone",
              "1f3fe": "medium-dark skin tone", "1f3ff": "dark skin tone"}


@dataclass(frozen=True)
class EmojiSet:
    """One npm package of emoji images: where its images lie, their caption style and licence."""

    name: str                       # key for --sets, e.g. "noto"
    package: tuple[str, str, str]   # (npm name, pinned version, tarball stem)
    folder: str                     # image folder inside the tarball, e.g. "package/img/google/64/"
    suffix: str                     # image file suffix: ".webp" or ".png"
    style: str                      # the style words captions carry, e.g. "3d", "noto flat"
    source: str                     # licence and attribution line for SOURCES.txt and the model card


EMOJI_SETS = {s.name: s for s in (
    EmojiSet("fluent3d", IMAGES_PACKAGE, "package/assets/", ".webp", "3d",
             "Microsoft Fluent Emoji 3D, MIT (c) Microsoft Corporation"),
    EmojiSet("noto", ("emoji-datasource-google", "16.0.0", "emoji-datasource-google"), "package/img/google/64/", ".png",
             "noto flat", "Noto Color Emoji (c) Google, Apache License 2.0"),
    EmojiSet("twemoji", ("emoji-datasource-twitter", "16.0.0", "emoji-datasource-twitter"), "package/img/twitter/64/",
             ".png", "twemoji flat", "Twemoji (c) Twitter, Inc and other contributors, CC-BY 4.0"),
)}
DEFAULT_SETS = ("fluent3d",)


def parse_sets(text: str) -> tuple[str, ...]:
    """"fluent3d,noto" → ("fluent3d", "noto"); unknown or repeated names are a LatentDiffError."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in EMOJI_SETS]
    if not names or unknown or len(set(names)) != len(names):
        raise LatentDiffError(f"--sets takes distinct names from {', '.join(EMOJI_SETS)}, got {text!r}")
    return names


@dataclass(frozen=True)
class EmojiInfo:
    """Caption data of one emoji (or one skin-tone variant) from emojibase."""

    label: str                      # CLDR label, e.g. "astronaut: light skin tone"
    tags: tuple[str, ...]           # CLDR keywords; skin variants inherit their parent's
    group: str | None               # e.g. "people-body"; None for regional indicators
    subgroup: str | None            # e.g. "person-role"
    base: str                       # normalised codepoints of the parent entry (hold-out key)
    emoji: str = ""                 # the emoji character sequence
    hexcode: str = ""               # emojibase's own spelling, e.g. "1F441-FE0F-200D-1F5E8-FE0F"


@dataclass
class BuildReport:
    """What a build wrote and what it left out."""

    out_dir: Path
    images: int = 0                                                # images written (all captioned)
    held_out: int = 0                                              # of which in the hold-out split
    unmatched: int = 0                                             # renders with no emojibase label
    unmatched_examples: list[str] = field(default_factory=list)    # their file names (a few)
    skin_fallback: int = 0                                         # labelled as base emoji + tone names
    duplicates: int = 0                                            # other renders of a kept sequence
    unreadable: int = 0                                            # renders Pillow could not decode
    labels_without_image: int = 0                                  # emojibase entries with no render
    per_set: dict[str, int] = field(default_factory=dict)          # images written per set

    def summary(self) -> str:
        """A few lines for the CLI."""
        lines = [f"wrote {self.images} images to {self.out_dir} ({self.images - self.held_out} train, "
                 f"{self.held_out} held out)",
                 f"unmatched renders: {self.unmatched}"
                 + (f" (e.g. {', '.join(self.unmatched_examples[:5])})" if self.unmatched_examples else ""),
                 f"duplicates skipped: {self.duplicates}; unreadable: {self.unreadable}; "
                 f"matched by skin-tone fallback: {self.skin_fallback}; "
                 f"emojibase labels without a render: {self.labels_without_image}"]
        if len(self.per_set) > 1:
            lines.append("per set: " + ", ".join(f"{k} {v}" for k, v in self.per_set.items()))
        return "\n".join(lines)


def normalize_codepoints(sequence: str) -> str:
    """Canonical codepoint key: "1F9D1-200D-1F680" / "23-fe0f-20e3" → "1f9d1-200d-1f680" / "0023-20e3"."""
    parts = sequence.strip().replace("_", "-").replace(" ", "-").split("-")
    try:
        points = [f"{int(p, 16):04x}" for p in parts if p]
    except ValueError:
        raise ValueError(f"not a codepoint sequence: {sequence!r}") from None
    return "-".join(p for p in points if p not in DROPPED_CODEPOINTS)


def is_held_out(base: str) -> bool:
    """The fixed hold-out rule: sha256(base codepoints) as an integer ≡ 0 (mod 20)."""
    return int(hashlib.sha256(base.encode()).hexdigest(), 16) % HOLDOUT_MODULUS == 0


def emojibase_index(entries: list[dict], groups: dict | None = None) -> dict[str, EmojiInfo]:
    """Map normalised codepoints → EmojiInfo for every entry of en/data.json and its skins."""
    group_names = (groups or {}).get("groups", {})
    subgroup_names = (groups or {}).get("subgroups", {})

    def name(table: dict, number: object) -> str | None:
        return None if number is None else table.get(str(number), str(number))

    index: dict[str, EmojiInfo] = {}
    for entry in entries:
        base = normalize_codepoints(entry["hexcode"])
        tags = tuple(entry.get("tags") or ())
        for item in [entry, *(entry.get("skins") or ())]:
            key = normalize_codepoints(item["hexcode"])
            index.setdefault(key, EmojiInfo(
                label=item["label"], tags=tags, base=base, emoji=item.get("emoji", ""), hexcode=item["hexcode"],
                group=name(group_names, item.get("group", entry.get("group"))),
                subgroup=name(subgroup_names, item.get("subgroup", entry.get("subgroup")))))
    return index


def match_emoji(key: str, index: dict[str, EmojiInfo]) -> tuple[EmojiInfo | None, bool]:
    """The EmojiInfo for a normalised key, and whether it came from the skin-tone fallback."""
    if key in index:
        return index[key], False
    points = key.split("-")
    tones = [SKIN_TONES[p] for p in points if p in SKIN_TONES]
    base = index.get("-".join(p for p in points if p not in SKIN_TONES)) if tones else None
    if base is None:
        return None, False
    label = f"{base.label}: {', '.join(dict.fromkeys(tones))}"
    return EmojiInfo(label, base.tags, base.group, base.subgroup, base.base, base.emoji, key), True


def render_image(data: bytes, size: int, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode a render, composite it onto the background and fit it into a size×size square."""
    with Image.open(io.BytesIO(data)) as im:
        image = flatten_alpha(im, background)
    if image.size == (size, size):
        return image
    scale = size / max(image.size)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return canvas


def _read_json(tar: tarfile.TarFile, name: str) -> object:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise LatentDiffError(f"{tar.name}: no {name} inside; is this the emojibase-data tarball?") from None
    return json.load(tar.extractfile(member))


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an out_dir that is the current folder (or holds it), a file, or a non-empty folder not built here."""
    resolved, cwd = out_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise LatentDiffError(f"OUT_DIR {out_dir} is the current folder or contains it; name a new folder, "
                              "e.g. data/emoji")
    if out_dir.exists() and not out_dir.is_dir():
        raise LatentDiffError(f"{out_dir} exists and is not a folder; name a new folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise LatentDiffError(f"{out_dir} exists and is not empty (choose another folder or overwrite)")
    if not (out_dir / MARKER).is_file():
        raise LatentDiffError(f"{out_dir} was not made by `latentdiff data emoji` (no {MARKER} in it); "
                              "refusing to replace it, choose another folder")


def build_emoji_dataset(
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,              # npm tarball cache; default ~/.cache/latentdiff/npm
    tarballs: str | Path | None = None,               # folder with the .tgz files already downloaded
    size: int = 256,                                  # output side in pixels
    background: tuple[int, int, int] = WHITE,         # colour behind transparent pixels
    overwrite: bool = False,                          # replace a non-empty out_dir that this builder made
    progress: bool = True,                            # tqdm bar
    sets: tuple[str, ...] = DEFAULT_SETS,             # image sets (EMOJI_SETS keys), e.g. ("fluent3d", "noto")
) -> BuildReport:
    """Write the emoji image-caption dataset (PNG + metadata.jsonl + holdout.txt) to out_dir."""
    out_dir = Path(out_dir)
    if size < 8:
        raise LatentDiffError(f"--size must be at least 8, got {size}")
    chosen = [EMOJI_SETS[n] for n in parse_sets(",".join(sets))]
    check_out_dir(out_dir, overwrite)
    if tarballs is not None:
        folder = Path(tarballs)
        if not folder.is_dir():
            raise LatentDiffError(f"--tarballs folder not found: {folder}")
        get = lambda package: find_tarball(folder, package)  # noqa: E731
    else:
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        get = lambda package: fetch_tarball(package, cache)  # noqa: E731
    images = [(emoji_set, get(emoji_set.package)) for emoji_set in chosen]
    labels_tgz = get(LABELS_PACKAGE)

    with open_tarball(labels_tgz) as tar:
        index = emojibase_index(_read_json(tar, "package/en/data.json"), _read_json(tar, "package/meta/groups.json"))
    with atomic_folder(out_dir, prefix="building-") as tmp:
        report = _write_dataset(images, index, tmp, size, background, progress)
        sources = "".join(f"Images ({s.name}, style \"{s.style}\"): npm {s.package[0]}@{s.package[1]} ({tgz.name}), "
                          f"{s.source}.\n" for s, tgz in images)
        (tmp / "SOURCES.txt").write_text(
            sources + f"Captions: npm {LABELS_PACKAGE[0]}@{LABELS_PACKAGE[1]} ({labels_tgz.name}), MIT, CLDR labels and tags.\n"
            f"Built by latentdiff.data.emoji: {size}x{size} PNG on background {background}; "
            f"hold-out = sha256(base codepoints) % {HOLDOUT_MODULUS} == 0.\n", encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps({"builder": "latentdiff data emoji", "sets": list(sets), "size": size})
                                  + "\n", encoding="utf-8")
    report.out_dir = out_dir
    return report


def _read_renders(images_tgz: Path, emoji_set: EmojiSet) -> dict[str, bytes]:
    """File name → image bytes for every image of the set in the tarball, read in archive order (one pass)."""
    with open_tarball(images_tgz) as tar:
        renders = {Path(m.name).name: tar.extractfile(m).read() for m in tar
                   if m.isfile() and m.name.startswith(emoji_set.folder) and m.name.endswith(emoji_set.suffix)
                   and "/" not in m.name[len(emoji_set.folder):]}
    if not renders:
        raise LatentDiffError(f"{images_tgz}: no {emoji_set.folder}*{emoji_set.suffix} images inside; "
                              f"is this the {emoji_set.package[0]} tarball?")
    return renders


def _preference(file_name: str, info: EmojiInfo) -> tuple:
    """Sort key among renders of one sequence: emojibase's own spelling first, then fully qualified."""
    stem = Path(file_name).stem.lower()
    return stem != info.hexcode.lower(), -len(stem.split("-")), file_name


def _write_dataset(images: list[tuple[EmojiSet, Path]], index: dict[str, EmojiInfo], out: Path, size: int,
                   background: tuple[int, int, int], progress: bool) -> BuildReport:
    report = BuildReport(out_dir=out)
    lines, holdout, seen = [], [], set()
    for emoji_set, images_tgz in images:
        before = len(lines)
        seen |= _write_set(emoji_set, images_tgz, index, out, size, background, progress, report, lines, holdout)
        report.per_set[emoji_set.name] = len(lines) - before
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    (out / "holdout.txt").write_text(
        f"# held-out emoji: sha256(base codepoints) % {HOLDOUT_MODULUS} == 0; file_name<TAB>label\n"
        + "".join(line + "\n" for line in holdout), encoding="utf-8")
    report.images, report.held_out = len(lines), len(holdout)
    report.labels_without_image = sum(1 for k in index if k not in seen)
    return report


def _write_set(emoji_set: EmojiSet, images_tgz: Path, index: dict[str, EmojiInfo], out: Path, size: int,
               background: tuple[int, int, int], progress: bool, report: BuildReport,
               lines: list[dict], holdout: list[str]) -> set[str]:
    """Write one set's images and append their metadata lines; returns the codepoint keys it had renders for."""
    renders = _read_renders(images_tgz, emoji_set)
    by_key: dict[str, list[tuple[str, EmojiInfo, bool]]] = {}
    for file_name in sorted(renders):
        try:
            key = normalize_codepoints(Path(file_name).stem)
        except ValueError:
            key = ""
        info, fallback = match_emoji(key, index) if key else (None, False)
        if info is None:
            report.unmatched += 1
            if len(report.unmatched_examples) < 10:
                report.unmatched_examples.append(file_name)
        else:
            by_key.setdefault(key, []).append((file_name, info, fallback))

    sub = "" if emoji_set.name == DEFAULT_SETS[0] else f"{emoji_set.name}/"
    if sub:
        (out / sub).mkdir()
    for key in tqdm(sorted(by_key), desc=emoji_set.name, unit="img", disable=None if progress else True):
        candidates = sorted(by_key[key], key=lambda c: _preference(c[0], c[1]))
        image = None
        for tried, (file_name, info, fallback) in enumerate(candidates, 1):  # the first that decodes
            try:
                image = render_image(renders[file_name], size, background)
                break
            except (OSError, SyntaxError, ValueError):
                report.unreadable += 1
        if image is None:
            continue
        report.duplicates += len(candidates) - tried
        report.skin_fallback += fallback
        split = "holdout" if is_held_out(info.base) else "train"
        out_name = f"{sub}{key}.png"
        image.save(out / out_name)
        lines.append({"file_name": out_name, "text": info.label, "tags": list(info.tags),
                      "group": info.group, "subgroup": info.subgroup, "codepoints": key,
                      "emoji": info.emoji, "split": split, "style": emoji_set.style, "set": emoji_set.name})
        if split == "holdout":
            holdout.append(f"{out_name}\t{info.label}")
    return set(by_key)
