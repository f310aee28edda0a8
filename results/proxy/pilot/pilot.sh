#!/usr/bin/env bash
# Proxy-profile pilot (issue 10): candidate profiles x {bf16, microscaling} x 3 seeds, all at once on one GPU.
# Usage on the GPU machine: bash results/proxy/pilot/pilot.sh OUTDIR [TIME_LIMIT_S]
set -u
out=${1:?output dir}; limit=${2:-500}
mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
common=(--config configs/models/deit_tiny_fmnist.yaml --data-path data/fashion-mnist
        --set "model.timm_kwargs={depth: 8}" --set data.num_workers=2 --set train.epochs=10 --set train.log_interval=50)
declare -A profile=(
  [A]=""
  [B]="--set aug.mixup=0.8 --set aug.cutmix=1.0 --set aug.scale=[0.35,1.0]"
)
for p in A B; do
  for method in bf16 microscaling; do
    for seed in 0 1 2; do
      dir="$out/$p/$method/seed$seed"
      mkdir -p "$dir"
      # shellcheck disable=SC2086
      timeout "$limit" python3 main.py "${common[@]}" --config "configs/methods/$method.yaml" ${profile[$p]} \
        --set train.seed=$seed --output "$dir" > "$dir/stdout.txt" 2>&1 &
    done
  done
done
wait
