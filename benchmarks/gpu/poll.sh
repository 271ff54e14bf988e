#!/usr/bin/env bash
# Wait up to $1 seconds for benchmarks/gpu/session.sh (or until it exits), then pack what it made into $OUT:
# logs, benchmark JSON, loss CSVs, the latest sample grids and (once exported) the model, in ≤15 MB parts.
cd "$(dirname "$0")/../.."
G=runs/gpu
end=$((SECONDS + ${1:-540}))
alive() { [ -f $G/pid ] && kill -0 "$(cat $G/pid)" 2>/dev/null; }
while [ $SECONDS -lt $end ] && alive && [ ! -f $G/done ]; do sleep 5; done
R=runs/gpu-pack; rm -rf $R; mkdir -p $R/logs
for f in $G/*.log $G/*.txt $G/*.rc; do [ -f "$f" ] && tr '\r' '\n' < "$f" | grep -v '^$' | tail -300 > $R/logs/$(basename "$f"); done
cp $G/*.yaml $G/*.png $R/ 2>/dev/null
cp $G/*.json $R/ 2>/dev/null  # benchmark results: copy them into benchmarks/results/ after fetching
for s in vae unet; do
  d=${RUN:-runs/default-256}/$s; [ -d $d ] || continue
  cp $d/loss.csv $R/$s-loss.csv 2>/dev/null
  ls $d/samples/*.png 2>/dev/null | tail -2 | while read p; do cp "$p" $R/$s-$(basename "$p"); done
done
[ -f $G/model-ready ] && cp -r ${RUN:-runs/default-256}/model $R/model
tar cf - -C runs gpu-pack | split -b 15M -d - $OUT/pack.tar.
echo "== stages"; cat $G/stages.txt 2>/dev/null
for f in bench lora data vae unet export generate bench2; do [ -f $G/$f.log ] && { echo "== $f"; tr '\r' '\n' < $G/$f.log | grep -v '^$' | tail -4; }; done
for s in vae unet; do [ -f ${RUN:-runs/default-256}/$s/loss.csv ] && { echo "== $s loss"; tail -2 ${RUN:-runs/default-256}/$s/loss.csv; }; done
alive && echo "DRIVER RUNNING" || echo "DRIVER EXITED"
ls -la $OUT
