"""Build the CLIP BPE tokenizer files we ship (SD1 and SD2 variants) from open_clip's merge list.

Usage: python scripts/make_tokenizer.py [BPE_GZ_OR_WHEEL] [--out latentdiff/assets]

BPE_GZ_OR_WHEEL is open_clip's `bpe_simple_vocab_16e6.txt.gz`, or an `open_clip_torch` wheel that
contains it (default: /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl). The vocabulary is laid out as
CLIP's `SimpleTokenizer` lays it out: 256 byte symbols, the same with "</w>", one entry per merge,
then the two special tokens, so that `<|startoftext|>` is 49406 and `<|endoftext|>` 49407.
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49408 = 2 * 256 byte symbols + merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_SOURCE = Path("/tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl")
WHEEL_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes 0..255, in GPT-2/CLIP vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbol = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in symbol]
    symbol.update({b: chr(256 + i) for i, b in enumerate(others)})  # unprintable bytes move above U+00FF
    order = printable + others  # printable bytes first, then the rest, as CLIP lists them
    return [symbol[b] for b in order]


def read_merges(source: Path) -> list[str]:
    """The first NUM_MERGES merge lines ("a b") of open_clip's list, header line skipped."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            raw = wheel.read(WHEEL_MEMBER)
    else:
        raw = source.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    if len(merges) != NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise SystemExit(f"{source}: expected {NUM_MERGES} merge lines of two symbols each")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    """token -> id: byte symbols, byte symbols + "</w>", merged pairs, then BOS and EOS."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def special(content: str) -> dict:
    """An AddedToken entry as transformers writes it for CLIP."""
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def tokenizer_files(pad_token: str) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for one pad-token variant."""
    specials = {"bos_token": special(BOS), "eos_token": special(EOS), "unk_token": special(EOS), "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        **specials,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": specials}


def write_variant(folder: Path, vocab: dict[str, int], merges: list[str], pad_token: str) -> None:
    """Write vocab.json, merges.txt and the two config files into one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    for name, content in tokenizer_files(pad_token).items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    """Parse arguments and write latentdiff/assets/tokenizer (SD1) and tokenizer_sd2 (SD2)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "latentdiff" / "assets")
    args = parser.parse_args()
    merges = read_merges(args.source)
    vocab = build_vocab(merges)
    if len(vocab) != 49408 or vocab[BOS] != 49406 or vocab[EOS] != 49407:
        raise SystemExit(f"unexpected vocabulary: {len(vocab)} tokens")
    write_variant(args.out / "tokenizer", vocab, merges, pad_token=EOS)  # SD1: pads with <|endoftext|>
    write_variant(args.out / "tokenizer_sd2", vocab, merges, pad_token="!")  # SD2 (OpenCLIP): pads with "!" (id 0)
    print(f"wrote {args.out / 'tokenizer'} and {args.out / 'tokenizer_sd2'} ({len(vocab)} tokens)")


if __name__ == "__main__":
    main()
