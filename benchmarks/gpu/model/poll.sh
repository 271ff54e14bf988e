#!/usr/bin/env bash
# Wait up to $1 seconds for benchmarks/gpu/model/session.sh (or until it exits), then pack what it made into $OUT in ≤15 MB
# parts: logs, the CUDA checks (junit XML, benchmark JSON), loss CSVs, sample grids, and either the exported model or,
# while training runs, the latest VAE and U-Net checkpoints with their EMA weights in fp16 and the latent scale
# (export them here: copy ckpt/vae and ckpt/unet into the recipe's output_dir, then `latentdiff train CONFIG --stage export`;
# checked by the DRY run).
cd "$(dirname "$0")/../../.."
[ -x .venv/bin/python3 ] && export PATH=$PWD/.venv/bin:$PATH  # here (the DRY run); the device's python3 has torch
G=runs/gpu
end=$((SECONDS + ${1:-530}))
alive() { [ -f $G/pid ] && kill -0 "$(cat $G/pid)" 2>/dev/null; }
while [ $SECONDS -lt $end ] && alive && [ ! -f $G/done ]; do sleep 5; done
R=runs/gpu-pack; rm -rf $R; mkdir -p $R/logs
for f in $G/*.log $G/*.txt $G/*.rc; do [ -f "$f" ] && tr '\r' '\n' < "$f" | grep -v '^$' | tail -300 > $R/logs/$(basename "$f"); done
cp $G/*.yaml $G/*.png $G/*.xml $G/*.json $R/ 2>/dev/null  # benchmark JSON: copy into benchmarks/results/ after fetching
run=$(cat $G/run_dir 2>/dev/null)
if [ -n "$run" ]; then
  for s in vae unet; do
    d=$run/$s; [ -d $d ] || continue
    cp $d/log.csv $R/$s-loss.csv 2>/dev/null
    ls $d/samples/*.png 2>/dev/null | tail -2 | while read p; do cp "$p" $R/$s-$(basename "$p"); done
    if [ ! -f $G/model-ready ] && [ -f $d/checkpoints/latest/state.pt ]; then  # no model yet: the checkpoint, EMA in fp16
      mkdir -p $R/ckpt/$s/checkpoint
      cp $d/checkpoints/latest/arch.json $R/ckpt/$s/checkpoint/
      python3 -c "import sys, torch; from safetensors.torch import load_file, save_file
s = load_file(sys.argv[1]); save_file({k: v.half().contiguous() for k, v in s.items()}, sys.argv[2])" \
        $d/checkpoints/latest/ema.safetensors $R/ckpt/$s/checkpoint/ema.safetensors
      python3 -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=False)['step'])" $d/checkpoints/latest/state.pt > $R/ckpt/$s/step.txt
      [ -f $d/latents.pt ] && python3 -c "import sys, torch  # export reads only the latent scale; a stale stamp re-encodes
torch.save({'stamp': None, 'moments': torch.empty(0), 'scale': torch.load(sys.argv[1], weights_only=False)['scale']}, sys.argv[2])" \
        $d/latents.pt $R/ckpt/$s/latents.pt
    fi
  done
  [ -f $G/model-ready ] && cp -r $run/model $R/model
fi
tar cf - -C runs gpu-pack | split -b 15M -d - $OUT/pack.tar.
echo "== stages"; cat $G/stages.txt 2>/dev/null
for f in parity bench lora data vae unet export generate; do
  [ -f $G/$f.log ] && { echo "== $f"; tr '\r' '\n' < $G/$f.log | grep -v '^$' | tail -4; }; done
for s in vae unet; do [ -f "$run/$s/log.csv" ] && { echo "== $s loss"; tail -2 $run/$s/log.csv; }; done
alive && echo "DRIVER RUNNING" || echo "DRIVER EXITED"
ls -la $OUT
