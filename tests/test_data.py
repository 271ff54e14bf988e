"""Emoji dataset builder and image-caption datasets, on tiny fake npm tarballs and folders."""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from latentdiff.cli.data import add_data_parser, run_data
from latentdiff.data import emoji
from latentdiff.data.dataset import (EMOJI_TEMPLATES, BucketBatchSampler, CaptionSampler, ImageCaptionDataset,
                                      Record, assign_bucket, make_buckets, scan_folder)
from latentdiff.data.emoji import build_emoji_dataset, is_held_out, normalize_codepoints
from latentdiff.errors import LatentDiffError

SIDE = 16
ENTRIES = [  # a slice of emojibase-data en/data.json, same field layout
    {"label": "cat face", "hexcode": "1F431", "tags": ["animal", "cat", "face", "kitten", "kitty", "pet"],
     "emoji": "🐱", "group": 3, "subgroup": 34},
    {"label": "cat", "hexcode": "1F408", "tags": ["animal", "pet"], "emoji": "🐈", "group": 3, "subgroup": 34},
    {"label": "astronaut", "hexcode": "1F9D1-200D-1F680", "tags": ["rocket", "space"], "emoji": "🧑‍🚀",
     "group": 1, "subgroup": 25, "skins": [
         {"label": "astronaut: light skin tone", "hexcode": "1F9D1-1F3FB-200D-1F680", "group": 1, "subgroup": 25}]},
    {"label": "handshake", "hexcode": "1F91D", "tags": ["agreement", "hand"], "group": 1, "subgroup": 20},
    {"label": "eye in speech bubble", "hexcode": "1F441-FE0F-200D-1F5E8-FE0F", "tags": ["eye"],
     "group": 0, "subgroup": 15},
    {"label": "keycap: #", "hexcode": "0023-FE0F-20E3", "tags": ["keycap"], "group": 8, "subgroup": 94},
    {"label": "flag: Scotland", "hexcode": "1F3F4-E0067-E0062-E0073-E0063-E0074-E007F", "tags": ["flag"],
     "group": 9, "subgroup": 99},
    {"label": "smiling face", "hexcode": "263A", "tags": ["face"], "group": 0, "subgroup": 0},
    {"label": "snake", "hexcode": "1F40D", "tags": ["reptile"], "group": 3, "subgroup": 37},
    {"label": "regional indicator A", "hexcode": "1F1E6"},
]
GROUPS = {"groups": {"0": "smileys-emotion", "1": "people-body", "3": "animals-nature", "8": "symbols", "9": "flags"},
          "subgroups": {"0": "face-smiling", "15": "emotion", "20": "hands", "25": "person-role",
                        "34": "animal-mammal", "37": "animal-reptile", "94": "keycap", "99": "subdivision-flag"}}
RED, BLUE = (220, 30, 30, 255), (30, 30, 220, 255)


def webp(colour=(200, 100, 50, 255), size=(SIDE, SIDE)) -> bytes:
    """A lossless RGBA webp: one colour, a fully transparent (0, 0) and a half-transparent black (1, 1)."""
    image = Image.new("RGBA", size, colour)
    image.putpixel((0, 0), (10, 20, 30, 0))
    image.putpixel((1, 1), (0, 0, 0, 128))
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


RENDERS = {
    "1f431.webp": webp(),
    "1f408.webp": b"not a webp",                       # unreadable
    "1f9d1-200d-1f680.webp": webp(),
    "1f9d1-1f3fb-200d-1f680.webp": webp(),             # skin variant listed under "skins"
    "1f91d-1f3fc.webp": webp(),                        # skin variant not listed: tone fallback
    "1f441-200d-1f5e8.webp": webp(BLUE),               # duplicate spelling of the next
    "1f441-fe0f-200d-1f5e8-fe0f.webp": webp(RED),      # emojibase's spelling: kept
    "0023-fe0f-20e3.webp": webp(RED),                  # emojibase's spelling: kept
    "23-fe0f-20e3.webp": webp(BLUE),                   # unpadded duplicate
    "1f3f4-e0067_e0062_e0073_e0063_e0074.webp": webp(),  # tag sequence without E007F
    "263a-fe0f.webp": webp(),                          # FE0F only on the file side
    "1f40d.webp": webp(size=(SIDE, SIDE + 2)),         # held out; not square
    "1f9ff.webp": webp(),                              # no label: unmatched
    "not-hex.webp": webp(),                            # no label: unmatched
}


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tarballs(folder: Path) -> Path:
    """The two npm tarballs, shaped like the real ones (package/assets/*.webp; package/en/data.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "lobehub-fluent-emoji-3d-1.1.0.tgz", "w:gz") as tar:
        add_file(tar, "package/package.json", b'{"name": "@lobehub/fluent-emoji-3d"}')
        for name, data in RENDERS.items():
            add_file(tar, f"package/assets/{name}", data)
    with tarfile.open(folder / "emojibase-data-17.0.0.tgz", "w:gz") as tar:
        add_file(tar, "package/en/data.json", json.dumps(ENTRIES).encode())
        add_file(tar, "package/meta/groups.json", json.dumps(GROUPS).encode())
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    tarballs = make_tarballs(root / "npm")
    report = build_emoji_dataset(root / "out", tarballs=tarballs, size=SIDE, progress=False)
    return report, root / "out", tarballs


def read_metadata(folder: Path) -> dict[str, dict]:
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["codepoints"]: row for row in map(json.loads, lines)}


def test_normalize_codepoints():
    assert normalize_codepoints("1F9D1-200D-1F680") == "1f9d1-200d-1f680"
    assert normalize_codepoints("23-fe0f-20e3") == normalize_codepoints("0023-FE0F-20E3") == "0023-20e3"
    assert normalize_codepoints("1f3f4-e0067_e0062_e0073_e0063_e0074") == \
        normalize_codepoints("1F3F4-E0067-E0062-E0073-E0063-E0074-E007F")
    with pytest.raises(ValueError):
        normalize_codepoints("not-hex")


def test_build_counts_and_files(built):
    report, out, _ = built
    assert (report.images, report.unmatched, report.duplicates, report.unreadable, report.skin_fallback) == (9, 2, 2, 1, 1)
    assert sorted(report.unmatched_examples) == ["1f9ff.webp", "not-hex.webp"]
    assert report.labels_without_image == 2  # cat (unreadable render), regional indicator A
    assert len(list(out.glob("*.png"))) == 9
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 9
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_build_captions_through_normalisation(built):
    meta = read_metadata(built[1])
    assert meta["1f431"]["text"] == "cat face"
    assert meta["1f431"]["tags"] == ["animal", "cat", "face", "kitten", "kitty", "pet"]
    assert (meta["1f431"]["group"], meta["1f431"]["subgroup"]) == ("animals-nature", "animal-mammal")
    assert meta["1f9d1-200d-1f680"]["text"] == "astronaut"
    skin = meta["1f9d1-1f3fb-200d-1f680"]
    assert (skin["text"], skin["tags"], skin["subgroup"]) == ("astronaut: light skin tone", ["rocket", "space"], "person-role")
    assert meta["1f91d-1f3fc"]["text"] == "handshake: medium-light skin tone"
    assert meta["1f441-200d-1f5e8"]["text"] == "eye in speech bubble"
    assert meta["0023-20e3"]["text"] == "keycap: #"
    assert meta["1f3f4-e0067-e0062-e0073-e0063-e0074"]["text"] == "flag: Scotland"
    assert meta["263a"]["text"] == "smiling face"
    assert all(row["file_name"] == f"{key}.png" for key, row in meta.items())


def test_build_keeps_emojibase_spelling_of_duplicates(built):
    out = built[1]
    for key in ("0023-20e3", "1f441-200d-1f5e8"):
        assert Image.open(out / f"{key}.png").getpixel((8, 8)) == RED[:3]


def test_build_composites_on_white(built):
    image = Image.open(built[1] / "1f431.png")
    assert image.mode == "RGB" and image.size == (SIDE, SIDE)
    assert image.getpixel((0, 0)) == (255, 255, 255)            # transparent → exactly white
    assert image.getpixel((8, 8)) == (200, 100, 50)             # opaque untouched (lossless)
    assert all(abs(c - 127) <= 1 for c in image.getpixel((1, 1)))  # half-transparent black → mid grey
    snake = Image.open(built[1] / "1f40d.png")                   # 16×18 fitted into 16×16 on white
    assert snake.size == (SIDE, SIDE) and snake.getpixel((0, 8)) == (255, 255, 255)


def test_holdout_is_fixed_and_deterministic(built, tmp_path):
    _, out, tarballs = built
    meta = read_metadata(out)
    held = {k for k, row in meta.items() if row["split"] == "holdout"}
    assert held == {k for k in meta if is_held_out(k.replace("-1f3fb", "").replace("-1f3fc", ""))}
    assert "1f40d" in held and not held & {"1f431", "1f408", "1f9d1-200d-1f680", "1f9d1-1f3fb-200d-1f680"}
    assert not is_held_out("1f431") and not is_held_out("1f408") and not is_held_out("1f9d1-200d-1f680")
    listed = [line.split("\t")[0] for line in (out / "holdout.txt").read_text().splitlines() if not line.startswith("#")]
    assert listed == sorted(f"{k}.png" for k in held)
    build_emoji_dataset(tmp_path / "again", tarballs=tarballs, size=SIDE, progress=False)
    assert (tmp_path / "again" / "metadata.jsonl").read_bytes() == (out / "metadata.jsonl").read_bytes()


def test_build_refuses_non_empty_and_leaves_nothing_on_failure(built, tmp_path, monkeypatch):
    tarballs = built[2]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(LatentDiffError, match="not empty"):
        build_emoji_dataset(tmp_path / "full", tarballs=tarballs, size=SIDE, progress=False)
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    calls = []

    def failing(data, size, background):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return Image.new("RGB", (size, size))

    monkeypatch.setattr(emoji, "render_image", failing)
    with pytest.raises(RuntimeError, match="boom"):
        build_emoji_dataset(tmp_path / "new", tarballs=tarballs, size=SIDE, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["full"]


def test_build_missing_tarballs_message(tmp_path):
    with pytest.raises(LatentDiffError, match="lobehub-fluent-emoji-3d-1.1.0.tgz not found"):
        build_emoji_dataset(tmp_path / "out", tarballs=tmp_path, progress=False)


def test_fetch_with_npm_pack_and_cache(built, tmp_path, monkeypatch):
    bin_dir, cache = tmp_path / "bin", tmp_path / "cache"
    bin_dir.mkdir()
    npm = bin_dir / "npm"  # stands in for `npm pack SPEC --pack-destination DIR`
    npm.write_text('#!/bin/sh\ncase "$2" in @lobehub/*) f=lobehub-fluent-emoji-3d-1.1.0.tgz;; '
                   '*) f=emojibase-data-17.0.0.tgz;; esac\n'
                   f'echo "$*" >> "{tmp_path}/calls"\ncp "{built[2]}/$f" "$4/$f"\n')
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    report = build_emoji_dataset(tmp_path / "a", cache_dir=cache, size=SIDE, progress=False)
    assert report.images == 9
    assert sorted(p.name for p in cache.iterdir()) == ["emojibase-data-17.0.0.tgz", "lobehub-fluent-emoji-3d-1.1.0.tgz"]
    build_emoji_dataset(tmp_path / "b", cache_dir=cache, size=SIDE, progress=False)  # cached: npm not called
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["pack @lobehub/fluent-emoji-3d@1.1.0 --pack-destination " + calls[0].split()[-1],
                     "pack emojibase-data@17.0.0 --pack-destination " + calls[1].split()[-1]]


def test_cli(built, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="latentdiff")
    add_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "emoji", str(tmp_path / "out"), "--tarballs", str(built[2]), "--size", "8"])
    assert args.func is run_data and run_data(args) == 0
    assert "wrote 9 images" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "1f431.png").size == (8, 8)


def test_dataset_reads_built_folder_and_splits(built):
    out = built[1]
    train = ImageCaptionDataset(out, resolution=8, progress=False)
    holdout = ImageCaptionDataset(out, resolution=8, split="holdout", progress=False)
    assert len(train) + len(holdout) == 9 and [r.text for r in holdout.records] == ["snake"]
    assert len(ImageCaptionDataset(out, resolution=8, split=None, progress=False)) == 9
    item = train[[r.text for r in train.records].index("cat face")]
    assert item["caption"] == "cat face"
    assert item["pixel_values"].shape == (3, 8, 8) and item["pixel_values"].dtype == torch.float32
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    record = train.records[0]
    assert record.group is not None and record.size == (SIDE, SIDE)


def save_png(path: Path, colour=(0, 128, 255, 255), size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", size, colour).save(path)


def test_dataset_kohya_folder_and_bad_inputs(tmp_path, caplog):
    save_png(tmp_path / "a.png", (0, 0, 0, 0))                       # fully transparent
    (tmp_path / "a.txt").write_text("a red fox\n")
    save_png(tmp_path / "10_fox" / "b.png")
    (tmp_path / "10_fox" / "b.txt").write_text("a blue fox")
    save_png(tmp_path / "10_fox" / "no_caption.png")                 # no .txt
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")          # unreadable
    (tmp_path / "bad.txt").write_text("broken")
    (tmp_path / "notes.txt").write_text("not a caption of anything")
    (tmp_path / "holdout.txt").write_text("# comment\n10_fox/b.png\tblue fox\n")
    with caplog.at_level("WARNING"):
        dataset = ImageCaptionDataset(tmp_path, resolution=4, split=None, progress=False)
    assert {r.text: r.split for r in dataset.records} == {"a red fox": "train", "a blue fox": "holdout"}
    report = dataset.report
    assert (report.images, report.unreadable, report.uncaptioned, report.missing) == (2, 1, 1, 0)
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 1  # reported once
    assert torch.all(dataset[[r.text for r in dataset.records].index("a red fox")]["pixel_values"] == 1.0)  # → white
    assert len(ImageCaptionDataset(tmp_path, resolution=4, progress=False)) == 1


def test_dataset_errors(tmp_path):
    with pytest.raises(LatentDiffError, match="^no images in .*metadata.jsonl or same-stem .txt"):
        ImageCaptionDataset(tmp_path, progress=False)
    with pytest.raises(LatentDiffError, match="dataset folder not found"):
        ImageCaptionDataset(tmp_path / "nope", progress=False)
    save_png(tmp_path / "x.png")
    with pytest.raises(LatentDiffError, match="no usable images .* 1 without caption"):
        ImageCaptionDataset(tmp_path, progress=False)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "blue"}\n'
                                              '{"file_name": "gone.png", "text": "missing"}\n')
    records, report = scan_folder(tmp_path, progress=False)
    assert [r.text for r in records] == ["blue"] and report.missing == 1
    with pytest.raises(LatentDiffError, match="no 'holdout' images"):
        ImageCaptionDataset(tmp_path, split="holdout", progress=False)
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file name"}\n')
    with pytest.raises(LatentDiffError, match="metadata.jsonl:1: each line needs"):
        scan_folder(tmp_path, progress=False)


def test_caption_sampler_dropout_templates_and_determinism():
    record = Record(path=Path("x.png"), text="cat face", tags=("animal", "kitten", "pet"))
    sampler = CaptionSampler(templates=EMOJI_TEMPLATES, p_tags=0.5, p_drop=0.1)
    rng = random.Random(0)
    captions = [sampler(record, rng) for _ in range(1000)]
    assert 0.07 <= captions.count("") / 1000 <= 0.13
    kept = [c for c in captions if c]
    assert all("cat face" in c for c in kept)
    assert {t.replace("{style}", "3d").format("cat face") for t in EMOJI_TEMPLATES} <= set(kept)
    assert any(c.endswith(("kitten", "pet", "animal")) for c in kept)
    assert captions == [sampler(record, r) for r in [random.Random(0)] for _ in range(1000)]
    with pytest.raises(LatentDiffError):
        CaptionSampler(templates=("no placeholder",))


def test_dataset_items_are_seeded(built):
    dataset = ImageCaptionDataset(built[1], resolution=8, captions=CaptionSampler(EMOJI_TEMPLATES, p_drop=0.5),
                                  center_crop=False, random_flip=True, seed=3, progress=False)
    first = [dataset[i]["caption"] for i in range(len(dataset))]
    assert first == [dataset[i]["caption"] for i in range(len(dataset))]
    dataset.set_epoch(1)
    assert first != [dataset[i]["caption"] for i in range(len(dataset))]


def test_buckets():
    buckets = make_buckets(256)
    assert buckets == [(192, 320), (256, 256), (320, 192)]
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in make_buckets(512))
    assert buckets[assign_bucket((1000, 600), buckets)] == (320, 192)
    assert buckets[assign_bucket((600, 1000), buckets)] == (192, 320)
    assert buckets[assign_bucket((500, 520), buckets)] == (256, 256)
    with pytest.raises(LatentDiffError):
        make_buckets(100)


def test_bucket_batch_sampler():
    bucket_ids = [0, 1, 0, 2, 1, 0, 0, 2, 1]
    sampler = BucketBatchSampler(bucket_ids, 2, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert all(len({bucket_ids[i] for i in b}) == 1 for b in batches)
    assert batches == list(BucketBatchSampler(bucket_ids, 2, seed=1)) and len(sampler) == len(batches) == 5
    assert all(len(b) == 2 for b in BucketBatchSampler(bucket_ids, 2, drop_last=True))


def test_dataset_with_buckets(tmp_path):
    save_png(tmp_path / "wide.png", size=(40, 20))
    (tmp_path / "wide.txt").write_text("wide")
    save_png(tmp_path / "tall.png", size=(20, 40))
    (tmp_path / "tall.txt").write_text("tall")
    dataset = ImageCaptionDataset(tmp_path, buckets=make_buckets(64, step=16), progress=False)
    shapes = {dataset[i]["caption"]: tuple(dataset[i]["pixel_values"].shape) for i in range(2)}
    assert shapes["wide"][2] > shapes["wide"][1] and shapes["tall"][1] > shapes["tall"][2]
    assert all(s[1] % 16 == 0 and s[2] % 16 == 0 for s in shapes.values())


# -- more sets, styles, and the builder's inputs (issues 12 and 13) -------------------------------------------------
def png(colour=(30, 160, 60, 255), size=(8, 8)) -> bytes:
    """An RGBA PNG of one colour with a transparent corner, as the emoji-datasource 64×64 images are."""
    image = Image.new("RGBA", size, colour)
    image.putpixel((0, 0), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


NOTO = {  # emoji-datasource-google's layout: package/img/google/64/<codepoints>.png, FE0F kept in names
    "1f431.png": png(),
    "1f40d.png": png(),                           # snake: held out, in this style too
    "263a-fe0f.png": png(),
    "1f441-fe0f-200d-1f5e8-fe0f.png": png(),
    "1f9ff.png": png(),                           # no emojibase label: unmatched
}


def make_set_tarballs(folder: Path) -> Path:
    """The Fluent 3D + emojibase tarballs plus fake Noto and Twemoji ones (with a sheet that must be ignored)."""
    make_tarballs(folder)
    for stem, sub in (("emoji-datasource-google-16.0.0", "google"), ("emoji-datasource-twitter-16.0.0", "twitter")):
        with tarfile.open(folder / f"{stem}.tgz", "w:gz") as tar:
            add_file(tar, "package/LICENSE", b"MIT (code); images: see README")
            add_file(tar, f"package/img/{sub}/sheets/64.png", png(size=(16, 16)))
            for name, data in NOTO.items():
                add_file(tar, f"package/img/{sub}/64/{name}", data)
    return folder


def test_build_sets_carry_style_and_keep_holdout_in_every_style(tmp_path):
    tarballs = make_set_tarballs(tmp_path / "npm")
    report = build_emoji_dataset(tmp_path / "out", tarballs=tarballs, size=SIDE, progress=False,
                                 sets=("fluent3d", "noto", "twemoji"))
    assert report.per_set == {"fluent3d": 9, "noto": 4, "twemoji": 4}
    assert report.images == 17 and report.unmatched == 2 + 1 + 1  # 1f9ff and not-hex (3d), 1f9ff in each other set
    rows = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    by_file = {r["file_name"]: r for r in rows}
    assert by_file["noto/1f431.png"] == {
        "file_name": "noto/1f431.png", "text": "cat face", "tags": ENTRIES[0]["tags"], "group": "animals-nature",
        "subgroup": "animal-mammal", "codepoints": "1f431", "emoji": "🐱", "split": "train", "style": "noto flat",
        "set": "noto"}
    assert by_file["1f431.png"]["style"] == "3d" and by_file["twemoji/1f431.png"]["style"] == "twemoji flat"
    assert by_file["noto/263a.png"]["text"] == "smiling face"                           # FE0F dropped in the name
    assert by_file["twemoji/1f441-200d-1f5e8.png"]["text"] == "eye in speech bubble"
    held = {r["file_name"] for r in rows if r["split"] == "holdout"}
    assert held == {"1f40d.png", "noto/1f40d.png", "twemoji/1f40d.png"}  # snake, held out in all three styles
    holdout_txt = (tmp_path / "out" / "holdout.txt").read_text(encoding="utf-8")
    assert "noto/1f40d.png\tsnake" in holdout_txt and "twemoji/1f40d.png\tsnake" in holdout_txt
    assert Image.open(tmp_path / "out" / "noto" / "1f431.png").getpixel((0, 0)) == (255, 255, 255)  # on white
    assert Image.open(tmp_path / "out" / "noto" / "1f431.png").size == (SIDE, SIDE)
    sources = (tmp_path / "out" / "SOURCES.txt").read_text(encoding="utf-8")
    assert "Apache License 2.0" in sources and "CC-BY 4.0" in sources and "emoji-datasource-twitter@16.0.0" in sources

    # the dataset reads the styles, and captions name them; a bare label stays Fluent 3D's
    records, _ = scan_folder(tmp_path / "out", progress=False)
    style = {r.path.relative_to(tmp_path / "out").as_posix(): r.style for r in records}
    assert style["1f431.png"] == "3d" and style["noto/1f431.png"] == "noto flat"
    train = ImageCaptionDataset(tmp_path / "out", resolution=8, split="train", progress=False)
    assert len(train) == 14 and not any(r.text == "snake" for r in train.records)
    noto = next(r for r in records if r.path.name == "1f431.png" and r.style == "noto flat")
    three = next(r for r in records if r.path.name == "1f431.png" and r.style == "3d")
    sampler = CaptionSampler(EMOJI_TEMPLATES, p_tags=0.0, p_drop=0.0)
    assert [sampler.fill(t, noto) for t in EMOJI_TEMPLATES] == [
        "cat face, noto flat emoji", "a noto flat emoji of cat face", "cat face, noto flat emoji",
        "a noto flat render of cat face", "an emoji of cat face, noto flat icon"]
    assert [sampler.fill(t, three) for t in EMOJI_TEMPLATES] == [
        "cat face", "a 3d emoji of cat face", "cat face, 3d emoji", "a 3d render of cat face",
        "an emoji of cat face, 3d icon"]


def test_build_sets_errors(tmp_path, capsys):
    tarballs = make_tarballs(tmp_path / "npm")  # no Noto tarball there
    with pytest.raises(LatentDiffError, match="emoji-datasource-google-16.0.0.tgz not found"):
        build_emoji_dataset(tmp_path / "out", tarballs=tarballs, size=SIDE, progress=False, sets=("fluent3d", "noto"))
    from latentdiff.cli import main

    for bad in ("fluent3d,apple", "noto,noto", ","):
        assert main(["data", "emoji", str(tmp_path / "out"), "--tarballs", str(tarballs), "--sets", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --sets takes distinct names from fluent3d, noto, twemoji") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["npm"]


def test_overwrite_replaces_only_a_folder_the_builder_made(built, tmp_path, capsys):
    from latentdiff.cli import main

    tarballs = built[2]
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("five years of work")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.png").write_bytes(png())
    for folder in (thesis, photos):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert main(["data", "emoji", str(folder), "--tarballs", str(tarballs), "--size", "8", "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "was not made by `latentdiff data emoji`" in err and err.count("\n") == 1
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    made = tmp_path / "made"
    assert main(["data", "emoji", str(made), "--tarballs", str(tarballs), "--size", "8"]) == 0
    assert json.loads((made / emoji.MARKER).read_text())["builder"] == "latentdiff data emoji"
    (made / "stale.png").write_bytes(png())
    assert main(["data", "emoji", str(made), "--tarballs", str(tarballs), "--size", "8", "--overwrite"]) == 0
    assert not (made / "stale.png").exists() and (made / "1f431.png").is_file() and (made / emoji.MARKER).is_file()
    assert sorted(os.listdir(tmp_path)) == ["made", "photos", "thesis"]


@pytest.mark.parametrize("target", [".", "..", "./"])
@pytest.mark.parametrize("cwd_empty", [True, False])
def test_out_dir_current_folder_is_one_line_error(built, tmp_path, monkeypatch, capsys, target, cwd_empty):
    from latentdiff.cli import main

    here = tmp_path / "here"
    here.mkdir()
    if not cwd_empty:
        (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(here))
    for extra in ([], ["--overwrite"]):
        assert main(["data", "emoji", target, "--tarballs", str(built[2]), "--size", "8", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: OUT_DIR") and "current folder" in err and err.count("\n") == 1
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(here))) == before


def test_out_dir_that_is_a_file(built, tmp_path):
    (tmp_path / "x").write_text("a file")
    with pytest.raises(LatentDiffError, match="exists and is not a folder"):
        build_emoji_dataset(tmp_path / "x", tarballs=built[2], size=SIDE, progress=False, overwrite=True)
    assert (tmp_path / "x").read_text() == "a file"


def test_npm_failure_names_the_cause_and_the_tarballs_flag(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"  # npm 10's output when the registry refuses the connection
    npm.write_text('#!/bin/sh\ncat >&2 <<EOF\nnpm error code ECONNREFUSED\nnpm error syscall connect\n'
                   'npm error errno ECONNREFUSED\nnpm error FetchError: request to https://registry.npmjs.org/'
                   'emojibase-data failed, reason: connect ECONNREFUSED 127.0.0.1:443\n'
                   'npm error A complete log of this run can be found in: /root/.npm/_logs/x-debug-0.log\nEOF\n'
                   'exit 1\n')
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(LatentDiffError) as e:
        build_emoji_dataset(tmp_path / "out", cache_dir=tmp_path / "cache", size=SIDE, progress=False)
    message = str(e.value)
    assert "\n" not in message
    assert "reason: connect ECONNREFUSED 127.0.0.1:443" in message and "complete log" not in message
    assert "--tarballs DIR" in message and "npm pack @lobehub/fluent-emoji-3d@1.1.0" in message
    assert not (tmp_path / "out").exists()


def test_metadata_style_must_be_a_string(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "cat", "style": 5}) + "\n")
    with pytest.raises(LatentDiffError, match=r"metadata.jsonl:1: style must be a non-empty string, got 5"):
        scan_folder(tmp_path, progress=False)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "cat", "style": " flat "}) + "\n")
    assert scan_folder(tmp_path, progress=False)[0][0].style == "flat"
