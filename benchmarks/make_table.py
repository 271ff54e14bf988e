"""Regenerate the SD1.5 side-by-side block of benchmarks/BENCHMARKS.md from the harness's raw JSON in results/.

The block sits between two HTML comments; the hand-written index around it is kept as it is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TABLE = HERE / "BENCHMARKS.md"

# lever → (variant with it, variant without it, what we expected before measuring)
LEVERS = [
    ("channels-last (U-Net + VAE)", "ours-fp32-cl", "ours-fp32", "CPU 1.1-1.5× (oneDNN convs skip NCHW↔blocked reorders); GPU 1.1-1.3× with cuDNN"),
    ("fused QKV (self-attention)", "ours-fp32-qkv", "ours-fp32", "≤ 1.02×: one GEMM instead of three, a few % of a step"),
    ("channels-last + fused QKV", "ours-fp32-cl-qkv", "ours-fp32", "the product of the two"),
    ("bf16 autocast", "ours-bf16-autocast", "ours-fp32", "≈ 3.6× with AVX512-BF16/AMX; < 1× where bf16 is emulated"),
    ("bf16 weights", "ours-bf16", "ours-fp32", "as autocast, minus the casts; < 1× where bf16 is emulated"),
    ("torch.compile (inductor)", "ours-fp32-compile", "ours-fp32", "CPU 1.0-1.3× (fused pointwise ops); minutes of compile first"),
    ("compile + freezing + channels-last", "ours-fp32-cl-compile-freeze", "ours-fp32", "CPU 1.2-1.6× (prepacked oneDNN weights)"),
    ("fp16 (CUDA)", "ours-fp16", "ours-fp32", "GPU 3-6× (tensor cores)"),
    ("fp16 + channels-last (CUDA)", "ours-fp16-cl", "ours-fp16", "GPU 1.1-1.3×"),
    ("fp16 + cl + fused QKV (CUDA)", "ours-fp16-cl-qkv", "ours-fp16-cl", "GPU ≤ 1.03×"),
    ("fp16 + cl + compile max-autotune (CUDA)", "ours-fp16-cl-compile", "ours-fp16-cl", "GPU 1.2-1.4× (stable-fast README: eager 54.5 → compile 66.0 it/s)"),
    ("fp16 + cl + CUDA graphs (CUDA)", "ours-fp16-cl-cudagraph", "ours-fp16-cl", "GPU 1.3-1.9× at batch 1 (launch overhead gone)"),
]


def _f(x, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def _ratio(a, b) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}×"


def _get(row: dict, *keys):
    for k in keys:
        if not isinstance(row, dict) or row.get(k) is None:
            return None
        row = row[k]
    return row


def _peak_mb(row: dict):
    return _get(row, "memory", "gpu_peak_mb") or _get(row, "gpu_peak_mb") or _get(row, "memory", "peak_rss_mb")


def loaded(result: dict) -> bool:
    """True when the load average says other work shared the cores (timings contaminated).

    The load after the run counts the benchmark's own threads, which are subtracted; the load before it decays over
    a minute, so it is used only when no load after was recorded.
    """
    m = result["machine"]
    if m.get("device", "cpu") != "cpu":
        return False
    after, before = (m.get("load_average_after") or [None])[0], (m.get("load_average") or [None])[0]
    if after is not None:
        return after - (m.get("threads") or 1) > 0.75
    return before is not None and before > 0.75


def _load(m: dict, key: str) -> str:
    v = (m.get(key) or [None])[0]
    return "?" if v is None else f"{v:.2f}"


def section(name: str, result: dict) -> str:
    """One results file as a Markdown section: machine, settings, the per-variant table and the lever table."""
    m, s = result["machine"], result["settings"]
    rows = {r["name"]: r for r in result["variants"]}
    flags = m.get("cpu_flags", {})
    native_bf16 = flags.get("avx512_bf16") or flags.get("amx_bf16")
    lines = [f"## {result.get('label') or name}", "",
             f"Raw results: [`results/{name}`](results/{name}); started {result.get('started')}, finished {result.get('finished')}.", ""]
    if m.get("device", "cpu") == "cpu" and not loaded(result):
        lines += [f"Load average (1 min, the benchmark's own {m.get('threads')} threads included) before/after: "
                  f"{_load(m, 'load_average')} / {_load(m, 'load_average_after')}. Even so, the same U-Net step drifts by up "
                  "to ~20 % between minutes on this VM (see the paired rows): trust the **paired** ratios, where A and B "
                  "alternate step by step, over ratios of rows measured minutes apart.", ""]
    if loaded(result) or "smoke" in (result.get("label") or "").lower():
        lines += ["> **Not a result.** The load average before/after was "
                  f"{_load(m, 'load_average')} / {_load(m, 'load_average_after')} on {m.get('cpu_count')} cores: "
                  "other jobs shared the CPU, so these timings prove that the harness runs end to end and nothing more. "
                  "Repeat on an idle machine.", ""]
    device = m.get("gpu") or m.get("cpu")
    lines += [f"- device: `{m['device']}`, {device}; CPU capability {m.get('cpu_capability')}, "
              f"native bf16 (AVX512-BF16/AMX): **{'yes' if native_bf16 else 'no'}**; threads {m.get('threads')}",
              f"- torch {m.get('torch')}, diffusers {m.get('diffusers')}, transformers {m.get('transformers')}, python {m.get('python')}",
              f"- model: {('`' + s['model'] + '`') if s.get('model') else 'random weights, ' + s['layout'] + ' layout'}; U-Net CFG step = batch 2 at {s.get('latent', s['height'] // 8)}² latents, VAE decode of one such latent; "
              f"image = {s['width']}×{s['height']}, {s['steps']} {s['sampler']} steps, guidance {s['guidance']}",
              f"- medians of {s['step_repeats']} steps after {s['step_warmup']} warm-up, {s['decode_repeats']} VAE decodes after 1, "
              f"{s['e2e_repeats']} image(s) after a 1-step warm-up image; peak memory: "
              + ("`max_memory_allocated`" if m["device"].startswith("cuda") else "RSS high-water mark of a fresh process per variant"
                 " drawing a 2-step image (weights included)"),
              ""]
    diff_rows = [r for r in rows.values() if r["name"].startswith("diffusers") and _get(r, "unet_step", "median_s")]
    best = min(diff_rows, key=lambda r: r["unet_step"]["median_s"]) if diff_rows else None
    best_e2e = min((r["e2e"]["median_s"] for r in diff_rows if _get(r, "e2e", "median_s")), default=None)
    best_name = f" ({best['name']})" if best else ""
    lines += ["Ratios are ours ÷ diffusers at the same precision (below 1 is faster); \"× best\" divides by the fastest "
              f"diffusers row{best_name}.", "",
              "| variant | precision | U-Net CFG step (s) | × diffusers | × best | VAE decode (s) | × diffusers "
              "| image (s) | × diffusers | × best | peak memory (GB) | × diffusers | Δ vs our fp32 (/255, mean / max) | Δ vs diffusers fp32 |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["variants"]:
        ref = rows.get(r.get("reference"), {})
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('precision', '')} | failed: {r['error'][:80]} |" + " |" * 11)
            continue
        step, dec, e2e = (_get(r, k, "median_s") for k in ("unet_step", "vae_decode", "e2e"))
        mem = _peak_mb(r)
        own = r["name"] == ref.get("name")
        d_ours, d_ref = r.get("image_vs_ours_fp32") or {}, r.get("image_vs_diffusers_fp32") or {}
        lines.append(
            f"| {r['name']}{' (fast: ' + ', '.join(r['levers']) + ')' if r.get('levers') else ''} | {r.get('run_dtype') if r.get('fast') else r['precision']} "
            f"| {_f(step)} | {'' if own else _ratio(step, _get(ref, 'unet_step', 'median_s'))} "
            f"| {_ratio(step, best['unet_step']['median_s']) if best else '—'} "
            f"| {_f(dec)} | {'' if own else _ratio(dec, _get(ref, 'vae_decode', 'median_s'))} "
            f"| {_f(e2e, '.2f')} | {'' if own else _ratio(e2e, _get(ref, 'e2e', 'median_s'))} | {_ratio(e2e, best_e2e)} "
            f"| {_f(None if mem is None else mem / 1024, '.2f')} | {'' if own else _ratio(mem, _peak_mb(ref) if ref else None)} "
            f"| {_f(d_ours.get('mean_abs_255'), '.3f')} / {d_ours.get('max_abs_255', '—')} "
            f"| {_f(d_ref.get('mean_abs_255'), '.3f')} / {d_ref.get('max_abs_255', '—')} |")
    lever_lines = []
    for lever, on, off, predicted in LEVERS:
        a, b = _get(rows.get(on, {}), "unet_step", "median_s"), _get(rows.get(off, {}), "unet_step", "median_s")
        if a is None or b is None:
            continue
        ea, eb = _get(rows[on], "e2e", "median_s"), _get(rows[off], "e2e", "median_s")
        same = _get(rows[on], "image_vs_ours_fp32", "mean_abs_255")
        lever_lines.append(f"| {lever} | {predicted} | {b / a:.2f}× | {_ratio(eb, ea) if ea and eb else '—'} "
                           f"| {_f(same, '.3f')} |")
    if lever_lines:
        lines += ["", "Levers (gain = time without ÷ time with; above 1 is faster):", "",
                  "| lever | predicted gain | measured U-Net step gain | measured image gain | Δ vs our fp32 (/255) |",
                  "|---|---|---:|---:|---:|", *lever_lines]
    if result.get("pairs"):
        lines += ["", "Paired U-Net CFG steps (both loaded, steps alternated A B B A; ratio per round, then the median):", "",
                  "| A | B | what | A median (s) | B median (s) | A ÷ B per round | median A ÷ B | max U-Net output diff |",
                  "|---|---|---|---:|---:|---|---:|---:|"]
        for pr in result["pairs"]:
            for what, d in (("U-Net CFG step", pr), ("VAE decode", pr.get("vae_decode"))):
                if d:
                    lines.append(f"| {pr['a']} | {pr['b']} | {what} | {d['a_median_s']:.3f} | {d['b_median_s']:.3f} "
                                 f"| {', '.join(f'{x:.2f}' for x in d['ratios_a_over_b'])} | {d['median_ratio']:.2f} "
                                 f"| {pr['max_abs_output_diff']:.2e} |")
    extra = result.get("vae_tiling")
    if extra:
        lines += ["", "VAE tiling (decode only, fresh process each):", "",
                  "| image | tiling | decode (s) | peak RSS (GB) | Δ vs untiled (/255, mean / max) |", "|---|---|---:|---:|---|"]
        for t in extra:
            d = t.get("vs_untiled") or {}
            lines.append(f"| {t['size']}² | {t['tile'] or 'off'} | {_f(t.get('decode_s'), '.2f')} "
                         f"| {_f(None if t.get('peak_rss_mb') is None else t['peak_rss_mb'] / 1024, '.2f')} "
                         f"| {_f(d.get('mean_abs_255'), '.3f')} / {d.get('max_abs_255', '—')} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- make_table.py: begin (generated from results/*.json; edits inside are overwritten) -->", "<!-- make_table.py: end -->"


def harness_results(results_dir: str | os.PathLike = RESULTS) -> list[tuple[str, dict]]:
    """The results/*.json files this harness wrote (other benchmarks keep their own JSON there too)."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("variants"), list) and "layout" in data.get("settings", {}):
            out.append((p.name, data))
    return out


def render(results_dir: str | os.PathLike = RESULTS) -> str:
    """The generated block: the GPU note while no CUDA run exists, then one section per harness results file."""
    results = harness_results(results_dir)
    parts = [BEGIN, "",
             "# SD1.5 pipeline vs diffusers", "",
             "Measured by `latentdiff/bench/harness.py` (`latentdiff bench`, `benchmarks/bench_sd15.py`): our pipeline and diffusers' "
             "`StableDiffusionPipeline` on the same random SD1.5-layout weights, in one process; written by "
             "`benchmarks/make_table.py` from the raw JSON in [`results/`](results/).", ""]
    if not any(data["machine"]["device"].startswith("cuda") for _, data in results):
        parts += ["**GPU table: not measured yet.** No GPU was lent to the session that built the harness; it is CUDA-ready "
                  "(CUDA events, fp16, SDPA, channels-last, compile max-autotune, CUDA graphs via reduce-overhead): run "
                  "`latentdiff bench --device cuda --out benchmarks/results/cuda-sd15.json` on a GPU machine.", ""]
    for name, data in results:
        parts.append(section(name, data))
    return "\n".join(parts).rstrip() + "\n\n" + END + "\n"


def write_table(path: str | os.PathLike = TABLE, results_dir: str | os.PathLike = RESULTS) -> Path:
    """Replace the generated block of BENCHMARKS.md (appending it the first time), keeping the hand-written rest; atomic."""
    path = Path(path)
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + render(results_dir) + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = old.rstrip() + "\n\n" + render(results_dir)
    from latentdiff.fileio import atomic_write

    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    print(write_table(sys.argv[1] if len(sys.argv) > 1 else TABLE))
