#!/usr/bin/env bash
# The benchmarks' checks on a CUDA machine that has torch but not this project's other dependencies and no network:
# wheels for PyAV, open_clip, ftfy and wcwidth come in .whl/ (made where pip works with `pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl av open_clip_torch ftfy
# wcwidth`), tav runs from the source tree. Writes each check's table (.md), JSON and one log under $OUT
# (default /tmp/tav_gpu). With the project installed (`pip install -e .`), .whl/ is not needed.
#   bash benchmarks/device_checks.sh [BATCH] [CHECK ...]
# Checks: sample_fp32 sample_bf16 memory (GPU; the default set), gpt_profile (GPU decode, top operators),
# release64 release128 (GPU: the released U-Net at 16x64x64 / 16x128x128, bf16, with peak memory),
# cpu_gpt cpu_precision (the host CPU pinned to 2 cores: bf16 against fp32 where it has AMX),
# amx_unet amx_guidance (the release U-Net, contiguous and channels_last_3d, bf16 against fp32; the second with the
# top operators), amx_step (a whole guided step in fp32 and bf16, contiguous and channels-last).
# CPU_PIN (default 0,1) and GPU_PIN (default: every core) choose the cores, so CPU and GPU checks can run side by
# side in separate invocations started after a first one has installed the wheels (the install runs once), e.g.
#   bash benchmarks/device_checks.sh 16 none; GPU_PIN=4-15 bash benchmarks/device_checks.sh 16 release64 &
#   CPU_PIN=0,1 bash benchmarks/device_checks.sh 16 amx_unet; wait
set -u
OUT=${OUT:-/tmp/tav_gpu}
BATCH=${1:-16}
shift || true
CHECKS=${*:-sample_fp32 sample_bf16 memory}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu -e=CPU,CORE,SOCKET 2>/dev/null | tr '\n' ';'; echo
  echo "cores $(nproc); $(grep -o -w -E 'amx_bf16|amx_tile|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  if ls .whl/*.whl >/dev/null 2>&1 && mkdir /tmp/site_lock 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  mkdir -p /tmp/site && ln -sfn "$PWD/configs" /tmp/site/tav_configs
  export PYTHONPATH="/tmp/site:$PWD"
  python3 -c "import torch, av, open_clip, tav, tav_configs; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >>"$LOG" 2>&1
export PYTHONPATH="/tmp/site:$PWD"
cd benchmarks || exit 1
run() {  # name, timeout, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*" >>"$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.md" 2>>"$LOG"
  echo "=== $name: exit $? after $((SECONDS - t0)) s" >>"$LOG"
}
PIN="taskset -c ${CPU_PIN:-0,1}"
GPIN="taskset -c ${GPU_PIN:-0-$(($(nproc) - 1))}"
GTHREADS=$($GPIN nproc)
for check in $CHECKS; do
  case $check in
    sample_fp32) run sample_fp32 200 python3 bench_sample.py --device cuda --threads "$(nproc)" --batch "$BATCH" \
      --steps-timed 5 --json "$OUT/sample_fp32.json" ;;
    sample_bf16) run sample_bf16 150 python3 bench_sample.py --device cuda --threads "$(nproc)" --batch "$BATCH" \
      --steps-timed 5 --precision bf16 --json "$OUT/sample_bf16.json" ;;
    memory) run memory 120 python3 bench_guidance_memory.py --device cuda --batches 1 2 4 --steps 2 \
      --json "$OUT/memory.json" ;;
    gpt_profile) run gpt_profile 90 python3 -c '
import torch, time
from torch.profiler import profile, ProfilerActivity
from tav.gpt import GPT, gpt_preset, sample_codes
from tav.utils.runtime import autocast
dev = torch.device("cuda"); torch.manual_seed(0)
gpt = GPT(gpt_preset("urmp_upstream")).eval().to(dev)
prompts = torch.randint(0, gpt.cfg.text_vocab_size, (16, gpt.cfg.text_seq_len), device=dev)
for prec in ("32", "bf16", "32", "bf16"):
    with autocast(prec, dev):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        sample_codes(gpt, prompts, steps=64, seeds=list(range(16)), top_k=2048, top_p=0.8, restrict_to_video=True)
        torch.cuda.synchronize(); print(prec, "64 steps at batch 16:", round(time.perf_counter() - t0, 3), "s")
for prec in ("32", "bf16"):
    with autocast(prec, dev), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sample_codes(gpt, prompts, steps=32, seeds=list(range(16)), top_k=2048, top_p=0.8, restrict_to_video=True)
    print("##", prec); print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14))
' ;;
    release64) run release64 200 $GPIN python3 bench_sample.py --device cuda --threads "$GTHREADS" --unet release \
      --size 64 --batch 8 --steps-timed 3 --precision bf16 --json "$OUT/release64.json" ;;
    release128) run release128 240 $GPIN python3 bench_sample.py --device cuda --threads "$GTHREADS" --unet release \
      --size 128 --batch 4 --steps-timed 3 --precision bf16 --json "$OUT/release128.json" ;;
    amx_unet) run amx_unet 300 $PIN python3 bench_precision.py --nets unet unet_cl --threads 2 --frames 8 \
      --rounds 1 --json "$OUT/amx_unet.json" ;;
    amx_guidance) run amx_guidance 300 $PIN python3 bench_precision.py --nets unet_guidance unet_guidance_cl \
      --threads 2 --frames 8 --rounds 1 --profile --json "$OUT/amx_guidance.json" ;;
    amx_step) for prec in 32 bf16; do for cl in "" --channels-last; do
        run "amx_step_$prec${cl:+_cl}" 150 $PIN python3 bench_guidance_memory.py --batches 1 --steps 2 --threads 2 \
          --checkpointing off --precision "$prec" $cl --json "$OUT/amx_step_$prec${cl:+_cl}.json"
      done; done ;;
    cpu_gpt) run cpu_gpt 150 $PIN python3 bench_gpt.py --threads 2 --skip-train --json "$OUT/cpu_gpt.json" ;;
    cpu_precision) run cpu_precision 240 $PIN python3 bench_precision.py --threads 2 --frames 8 --rounds 1 \
      --json "$OUT/cpu_precision.json" ;;
    *) echo "unknown check $check" >>"$LOG" ;;
  esac
done
tail -3 "$LOG"
