// latentdiff's page: talks to the same A1111 API (/sdapi/v1) as any other client. No build step, no network.
"use strict";
const API = "/sdapi/v1";
const $ = (id) => document.getElementById(id);
let lastSeed = null, pngInfo = null, busy = false;

async function api(path, body) {
  const opt = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(API + path, opt);
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new Error((data && data.detail) || `HTTP ${r.status}`);
  return data;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadLists() {
  const [samplers, models, loras, options] = await Promise.all(
    [api("/samplers"), api("/sd-models"), api("/loras"), api("/options")]);
  for (const s of samplers) $("sampler").add(new Option(s.name, s.name));
  for (const m of models) $("model").add(new Option(m.title, m.title, false, m.title === options.sd_model_checkpoint));
  for (const l of loras) $("lora").add(new Option(l.name, l.name));
}

function num(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function payload() {
  const p = {prompt: $("prompt").value, negative_prompt: $("negative").value, seed: num("seed") ?? -1,
             batch_size: num("batch") ?? 1, sampler_name: $("sampler").value || null};
  for (const [key, id] of [["width", "width"], ["height", "height"], ["steps", "steps"], ["cfg_scale", "cfg"]]) {
    if (num(id) !== null) p[key] = num(id);
  }
  return p;
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

async function pollProgress() {
  while (busy) {
    try {
      const p = await api("/progress");
      $("progress").value = p.progress;
      if (p.state.sampling_steps) status(`step ${p.state.sampling_step}/${p.state.sampling_steps}, ETA ${p.eta_relative.toFixed(1)} s`);
      if (p.current_image) { $("preview").src = "data:image/png;base64," + p.current_image; $("preview").hidden = false; }
    } catch (e) { /* the next poll tries again */ }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function generate(ev) {
  ev.preventDefault();
  if (busy) return;
  const p = payload();
  let path = "/txt2img";
  if (mode() === "img2img") {
    if (!$("init").src) { status("choose an input image for img2img", true); return; }
    p.init_images = [$("init").src];
    p.denoising_strength = num("strength") ?? 0.75;
    path = "/img2img";
  }
  busy = true;
  $("generate").disabled = true;
  $("progress").value = 0;
  status("queued");
  pollProgress();
  const t0 = performance.now();
  try {
    const r = await api(path, p);
    const info = JSON.parse(r.info);
    r.images.forEach((b64, i) => addCard(b64, info.infotexts[i], info.all_seeds[i]));
    lastSeed = info.all_seeds[0];
    $("progress").value = 1;
    status(`${r.images.length} image(s) in ${((performance.now() - t0) / 1000).toFixed(2)} s` + (info.interrupted ? " (interrupted)" : ""));
  } catch (e) {
    status(e.message, true);
  } finally {
    busy = false;
    $("generate").disabled = false;
    $("preview").hidden = true;
  }
}

function addCard(b64, text, seed) {
  const card = document.createElement("figure");
  card.className = "card";
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  img.alt = text.split("\n")[0];
  const pre = document.createElement("pre");
  pre.className = "params";
  pre.textContent = text;
  const actions = document.createElement("div");
  actions.className = "actions";
  const dl = document.createElement("a");
  dl.href = img.src;
  dl.download = `latentdiff-${seed}.png`;
  dl.textContent = "Download";
  const send = button("Send to img2img", () => {
    $("init").src = img.src;
    document.querySelector("input[name=mode][value=img2img]").checked = true;
    showMode();
  });
  const reuse = button("Reuse seed", () => { $("seed").value = seed; });
  actions.append(dl, send, reuse);
  card.append(img, pre, actions);
  $("gallery").prepend(card);
}

function button(text, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.onclick = onclick;
  return b;
}

function showMode() { $("img2img").hidden = mode() !== "img2img"; }

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = reject;
    r.readAsDataURL(file);
  });
}

async function showPngInfo(file) {
  try {
    const r = await api("/png-info", {image: await readFile(file)});
    pngInfo = r.parameters;
    $("pnginfo-text").textContent = r.info || "(this PNG carries no parameters)";
    $("pnginfo").hidden = false;
  } catch (e) { status(e.message, true); }
}

function applyPngInfo() {
  if (!pngInfo) return;
  const p = pngInfo;
  $("prompt").value = p["Prompt"] ?? "";
  $("negative").value = p["Negative prompt"] ?? "";
  if (p["Steps"]) $("steps").value = p["Steps"];
  if (p["CFG scale"]) $("cfg").value = p["CFG scale"];
  if (p["Seed"]) $("seed").value = p["Seed"];
  if (p["Size"]) { const [w, h] = p["Size"].split("x"); $("width").value = w; $("height").value = h; }
  if (p["Sampler"]) $("sampler").value = p["Sampler"];
}

function init() {
  $("form").addEventListener("submit", generate);
  $("interrupt").onclick = () => api("/interrupt", {});
  $("seed-random").onclick = () => { $("seed").value = -1; };
  $("seed-reuse").onclick = () => { if (lastSeed !== null) $("seed").value = lastSeed; };
  $("lora-add").onclick = () => {
    if (!$("lora").value) return;
    $("prompt").value = `${$("prompt").value.trim()} <lora:${$("lora").value}:${$("lora-weight").value || 1}>`.trim();
  };
  $("model").onchange = async () => {
    status("loading " + $("model").value);
    try { await api("/options", {sd_model_checkpoint: $("model").value}); status("model " + $("model").value); }
    catch (e) { status(e.message, true); }
  };
  for (const r of document.querySelectorAll("input[name=mode]")) r.onchange = showMode;
  $("init-file").onchange = async () => { if ($("init-file").files[0]) $("init").src = await readFile($("init-file").files[0]); };
  $("pnginfo-apply").onclick = applyPngInfo;
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const f = e.dataTransfer.files[0];
    if (f) showPngInfo(f);
  });
  loadLists().catch((e) => status(e.message, true));
}

init();
