#!/usr/bin/env bash
# One lent-GPU session, run detached (setsid) on the device machine so that it outlives the tool's 10-minute
# commands: the SD1.5 and LoRA benchmarks, then the default model's training (vae → unet → export), then the
# compiled SD1.5 variants if time is left. benchmarks/gpu/poll.sh waits on it and packs its results into $OUT.
#   setsid nohup bash benchmarks/gpu/session.sh BUDGET_MIN > runs/gpu/driver.log 2>&1 < /dev/null &
# BUDGET_MIN: minutes from start by which the U-Net must be exported (its max_minutes is cut to fit).
# With the device tool (the machine goes back 30 s after a reply, so ask again at once; ignored runs/ persists):
#   run(command="mkdir -p runs/gpu && setsid nohup bash benchmarks/gpu/session.sh 21 > runs/gpu/driver.log 2>&1 \
#       < /dev/null & sleep 3; bash benchmarks/gpu/poll.sh 540", carry=[".whl", ".gpu"])
#   run(command="bash benchmarks/gpu/poll.sh 560")      # again until it prints DRIVER EXITED
# .whl: the diffusers and importlib_metadata wheels; .gpu/npm: the two npm tarballs of `latentdiff data emoji`.
# Each reply's files are runs/gpu-pack as ≤15 MB parts: cat pack.tar.* | tar x.
# DRY=1: the same steps on this CPU at toy sizes (tiny benchmark layouts, batch 2-4, seconds of training), to check
# the script before a lease: DRY=1 bash benchmarks/gpu/session.sh 6
set -u
cd "$(dirname "$0")/../.."
budget=${1:-21}
G=runs/gpu
mkdir -p $G
echo $$ > $G/pid
start=$(date +%s)
stage() { echo "$(date +%T) +$(( ($(date +%s) - start) / 60 ))m $*" | tee -a $G/stages.txt; }
left() { echo $(( budget * 60 - ($(date +%s) - start) )); }  # seconds left before the export deadline
trap 'stage "driver exit"; touch $G/done' EXIT

dev=cuda bench_extra="" lora_extra="--device cuda --steps 10 --max-batch 32" data_dir=data/emoji
if [ "${DRY:-0}" = 1 ]; then
  export PATH=$PWD/.venv/bin:$PATH
  dev=cpu bench_extra="--layout tiny --steps 2 --step-repeats 1 --decode-repeats 1 --e2e-repeats 1 --work-dir runs/gpu/bench"
  lora_extra="--device cpu --scale small --steps 2 --warmup 1" data_dir=$G/emoji
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
ld() { python3 -c 'import sys; from latentdiff.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv > $G/gpu.txt 2>&1
python3 -c 'import torch, transformers, diffusers, peft, accelerate; print(torch.__version__, transformers.__version__, diffusers.__version__, peft.__version__, accelerate.__version__)' > $G/versions.txt 2>&1

stage "dataset (CPU, background)"
( ld data emoji $data_dir --tarballs .gpu/npm > $G/data.log 2>&1; echo $? > $G/data.rc ) &
data_pid=$!

stage "bench sd15 (eager variants)"
timeout 360 bash -c "$(declare -f ld); ld bench --device $dev --variants diffusers-fp16,ours-fp16,ours-fp16-cl,ours-fp16-cl-qkv \
  --step-repeats 10 --decode-repeats 3 --e2e-repeats 2 $bench_extra --label 'H200, random SD1.5 weights, eager' \
  --out $G/$dev-sd15.json" > $G/bench.log 2>&1
echo "rc $?" >> $G/bench.log

stage "bench lora"
timeout 150 python3 benchmarks/lora_train.py --runs diffusers:4 ours:4 diffusers+gc:4 ours+gc:4 $lora_extra \
  --out $G/lora_train_$dev.json > $G/lora.log 2>&1
echo "rc $?" >> $G/lora.log

wait $data_pid
stage "dataset rc $(cat $G/data.rc)"
cfg=$G/default-model-256.yaml
vae_min=$(python3 -c "print(round(min(4.5, max(1.5, ($(left) - 690) / 60)), 2))")  # leave 10 min U-Net + 1.5 min overheads
cp configs/default-model-256.yaml $cfg
[ "${DRY:-0}" = 1 ] && { vae_min=0.1; sed -i "s/batch_size: 256/batch_size: 4/; s/batch_size: 32/batch_size: 2/; s/log_every: 50/log_every: 2/; s/sample_every: .*/sample_every: 0/; s#output_dir: runs/default-256#output_dir: $G/dry-256#; s#root: data/emoji#root: $PWD/$data_dir#" $cfg; }
sed -i "s/max_minutes: 4.5/max_minutes: $vae_min/" $cfg
stage "train vae ($vae_min min)"
ld train $cfg --stage vae > $G/vae.log 2>&1 || { stage "vae failed"; exit 1; }
unet_min=$(python3 -c "print(round(min(10.0, max(2.0, ($(left) - 60) / 60)), 2))")
[ "${DRY:-0}" = 1 ] && unet_min=0.2
sed -i "s/max_minutes: 10$/max_minutes: $unet_min/" $cfg
stage "train unet ($unet_min min)"
ld train $cfg --stage unet > $G/unet.log 2>&1 || { stage "unet failed"; exit 1; }
stage "export"
ld train $cfg --stage export > $G/export.log 2>&1 || { stage "export failed"; exit 1; }
out_dir=$(python3 -c "import yaml; print(yaml.safe_load(open('$cfg'))['output_dir'])")
ld generate "a cat in a spacesuit" --model $out_dir/model --seed 0 --out $G/cat.png > $G/generate.log 2>&1
touch $G/model-ready

stage "bench sd15 (compiled, while time lasts)"
t2=$(( $(left) + 180 )); [ $t2 -gt 60 ] || t2=60
[ "${DRY:-0}" = 1 ] && exit 0  # the compiled variants need CUDA
timeout $t2 bash -c "$(declare -f ld); ld bench --device cuda --variants diffusers-fp16,ours-fp16-cl-cudagraph \
  --step-repeats 20 --decode-repeats 5 --e2e-repeats 3 --no-memory --label 'H200, random SD1.5 weights, CUDA graphs' \
  --out $G/cuda-sd15-compiled.json" > $G/bench2.log 2>&1
echo "rc $?" >> $G/bench2.log
