"""PNG metadata: the generation parameters every PNG carries, as an A1111 `parameters` text chunk plus our JSON chunk."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from PIL import Image, PngImagePlugin

from ..defaults import SAMPLING_DEFAULTS
from ..errors import LatentDiffError
from ..fileio import atomic_write, publish
from .samplers import a1111_fields

JSON_KEY = "latentdiff"


@dataclass
class GenerationParams:
    """Everything needed to draw one image again."""

    prompt: str
    negative_prompt: str = ""
    steps: int = SAMPLING_DEFAULTS["num_inference_steps"]
    sampler: str = SAMPLING_DEFAULTS["sampler"]
    schedule: str = "automatic"     # the sampler's own, or karras, exponential, beta, sgm_uniform, ... (samplers.SCHEDULE_OPTIONS)
    guidance_scale: float = SAMPLING_DEFAULTS["guidance_scale"]
    seed: int = 0
    width: int = 512
    height: int = 512
    model: str = ""                 # the path given to from_pretrained, or "default"
    model_hash: str = ""            # A1111's "Model hash": sha256[:10] of the file; latentdiff.hashes for a folder
    guidance_rescale: float = 0.0
    clip_skip: int = 0
    loras: list = field(default_factory=list)   # [[path, weight], ...]
    dtype: str = ""                 # torch dtype name the image was drawn in ("float32", "bfloat16", ...)
    lora_hashes: dict = field(default_factory=dict)  # {lora path: A1111 "Lora hashes" entry (12 hex)}
    extra: dict = field(default_factory=dict)   # mode-specific settings (img2img strength, mask, input hash, ...)
    controls: list = field(default_factory=list)  # ControlNet units: settings, files, hashes (pipelines.control.unit_record)

    def to_a1111(self) -> str:
        """The A1111 `parameters` text: prompt, negative prompt, then `Key: value` pairs as A1111 ≥ 1.9 reads them."""
        lines = [self.prompt + "".join(f" <lora:{lora_alias(p)}:{w:g}>" for p, w in self.loras)]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        pairs = {"Steps": self.steps, **a1111_fields(self.sampler, self.schedule), "CFG scale": f"{self.guidance_scale:g}",
                 "Seed": self.seed, "Size": f"{self.width}x{self.height}"}
        pairs["RNG"] = "CPU"  # our noise: torch.randn on a CPU generator seeded per image; A1111 ≥ 1.6 then starts from the same
        if self.model_hash:
            pairs["Model hash"] = self.model_hash
        if self.model:
            pairs["Model"] = Path(self.model).stem if self.model != "default" else "default"
        if self.clip_skip:
            pairs["Clip skip"] = self.clip_skip + 1  # A1111 counts "1" as no skip
        if self.guidance_rescale:
            pairs["CFG Rescale"] = f"{self.guidance_rescale:g}"
        hashes = self.lora_hash_map()
        if hashes:
            pairs["Lora hashes"] = ", ".join(f"{lora_alias(p)}: {hashes[p]}" for p, _ in self.loras if p in hashes)
        for k, v in self.extra.items():
            pairs[k] = v
        lines.append(", ".join(f"{k}: {a1111_quote(v)}" for k, v in pairs.items()))
        return "\n".join(lines)

    def lora_hash_map(self) -> dict[str, str]:
        """{LoRA path: A1111 hash}: the recorded ones, else computed from the files that exist."""
        from ..hashes import lora_hash

        out = {}
        for path, _ in self.loras:
            if self.lora_hashes.get(path):
                out[path] = self.lora_hashes[path]
            elif Path(path).is_file():
                out[path] = lora_hash(path)
        return out

    def to_json(self) -> str:
        """The JSON chunk: every field, LoRA hashes filled in; strict JSON, so NaN or infinity is refused (one line)."""
        try:
            return json.dumps({**asdict(self), "lora_hashes": self.lora_hash_map()}, ensure_ascii=False, allow_nan=False)
        except ValueError:
            bad = [k for k, v in asdict(self).items() if isinstance(v, float) and not math.isfinite(v)]
            raise LatentDiffError(f"cannot record non-finite generation parameters ({', '.join(bad) or 'a nested value'})") from None

    @classmethod
    def from_json(cls, text: str) -> "GenerationParams":
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def lora_alias(path: str) -> str:
    """The name A1111 knows a LoRA by (`<lora:NAME:w>`, `Lora hashes`): the file stem, without `:` and `,`."""
    return Path(path).stem.replace(":", "").replace(",", "")


def a1111_quote(value) -> str:
    """A1111's quoting of an infotext value: JSON string syntax when it holds `,`, `:` or a newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def parse_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {key: value}) of an A1111 `parameters` text; `Size` stays "WxH"."""
    lines = text.strip().split("\n")
    pairs = _parse_pairs(lines[-1]) if lines else {}
    if len(pairs) >= 3:  # A1111's rule: the settings line has at least three pairs
        lines = lines[:-1]
    else:
        pairs = {}
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative), pairs


def _parse_pairs(line: str) -> dict[str, str]:
    """`Key: value, Key: "quoted, value", ...` → dict; a key is a word followed by words, spaces, `-` or `/`."""
    out, i, n = {}, 0, len(line)
    while i < n:
        colon = line.find(":", i)
        if colon < 0:
            break
        key = line[i:colon].strip()
        j = colon + 1
        while j < n and line[j] == " ":
            j += 1
        if j < n and line[j] == '"':  # a JSON string: up to the closing quote not escaped
            k = j + 1
            while k < n and line[k] != '"':
                k += 2 if line[k] == "\\" else 1
            raw, i = line[j:k + 1], line.find(",", k + 1)
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        else:
            end = line.find(",", j)
            value, i = line[j:end if end >= 0 else n].strip(), end
        if key and (key[0].isalnum() or key[0] == "_") and all(c.isalnum() or c in " _-/" for c in key):
            out[key] = value
        if i < 0:
            break
        i += 1
    return out


def _png_writer(image: Image.Image, params: GenerationParams):
    """A `write(tmp_path)` callable that saves the PNG with the A1111 text chunk and the JSON chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", params.to_a1111())
    info.add_itxt(JSON_KEY, params.to_json())
    return lambda tmp: image.save(tmp, format="PNG", pnginfo=info)


def save_png(image: Image.Image, params: GenerationParams, path: str | os.PathLike) -> Path:
    """Write the PNG with both chunks atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    write = _png_writer(image, params)
    if not path.parent.is_dir():
        raise LatentDiffError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise LatentDiffError(f"{path} is a folder; give a file name ending in .png")
    try:
        return atomic_write(path, write)
    except PermissionError as e:
        raise LatentDiffError(f"cannot write to {path.parent}: {e.strerror}") from None


def save_png_numbered(image: Image.Image, params: GenerationParams, folder: str | os.PathLike = ".", prefix: str = "") -> Path:
    """Write the PNG under the next free number in `folder`, reserving the name when the finished file is published.

    The file is written to a temp name, then hard-linked to `NNNNN.png`; a link fails if the name exists, so two
    concurrent runs that picked the same number cannot overwrite each other: the loser takes the next number. Where
    hard links are not supported the name is reserved by an exclusive create (O_CREAT|O_EXCL) and then replaced.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LatentDiffError(f"output folder does not exist: {folder}")
    write = _png_writer(image, params)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".latentdiff-", suffix=".png.tmp")
    os.close(fd)
    try:
        write(tmp)
        publish(tmp)
        for _ in range(100_000):
            path = next_free_path(folder, prefix)
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue  # another writer published this number first
            except OSError:  # no hard links here (some network/FAT file systems): reserve by exclusive create
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                except FileExistsError:
                    continue
                os.replace(tmp, path)
                return path
        raise LatentDiffError(f"no free numbered file name in {folder}")
    except PermissionError as e:
        raise LatentDiffError(f"cannot write to {folder}: {e.strerror}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_png_params(path: str | os.PathLike) -> GenerationParams:
    """The parameters a latentdiff PNG carries; one-line error for other files."""
    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"no such image: {path}")
    try:
        with Image.open(path) as im:
            text = im.info.get(JSON_KEY) or getattr(im, "text", {}).get(JSON_KEY)
    except OSError:
        raise LatentDiffError(f"{path} is not a readable image") from None
    if not text:
        raise LatentDiffError(f"{path} carries no latentdiff parameters")
    return GenerationParams.from_json(text)


def next_free_path(folder: str | os.PathLike = ".", prefix: str = "") -> Path:
    """The next numbered file name `00000.png`, `00001.png`, ... not yet taken in `folder`."""
    folder = Path(folder)
    taken = [int(p.stem[len(prefix):]) for p in folder.glob(f"{prefix}[0-9]*.png") if p.stem[len(prefix):].isdigit()]
    return folder / f"{prefix}{(max(taken) + 1 if taken else 0):05d}.png"
