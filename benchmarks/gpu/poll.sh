#!/usr/bin/env bash
# Lease plan v4: wait up to $1 seconds for benchmarks/gpu/session.sh (or until it exits), then pack what it made into
# $OUT in ≤15 MB parts (logs, junit XML, benchmark JSON) and print each step's last lines.
cd "$(dirname "$0")/../.."
G=runs/gpu
end=$((SECONDS + ${1:-520}))
alive() { [ -f $G/pid ] && kill -0 "$(cat $G/pid)" 2>/dev/null; }
while [ $SECONDS -lt $end ] && alive && [ ! -f $G/done ]; do sleep 5; done
R=runs/gpu-pack; rm -rf $R; mkdir -p $R/logs
for f in $G/*.log $G/*.txt; do [ -f "$f" ] && tr '\r' '\n' < "$f" | grep -v '^$' | tail -300 > $R/logs/$(basename "$f"); done
cp $G/*.xml $G/*.json $R/ 2>/dev/null  # benchmark JSON: copy into benchmarks/results/ after fetching
tar cf - -C runs gpu-pack | split -b 15M -d - ${OUT:-runs}/pack.tar.
echo "== stages"; cat $G/stages.txt 2>/dev/null
for f in parity bench lora lever-qkv row-controlnet row-sdxl lever-compile lever-cudagraph; do
  [ -f $G/$f.log ] && { echo "== $f"; tr '\r' '\n' < $G/$f.log | grep -v '^$' | tail -3; }; done
alive && echo "DRIVER RUNNING" || echo "DRIVER EXITED"
ls -la ${OUT:-runs}
