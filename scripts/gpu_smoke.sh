#!/usr/bin/env bash
# GPU smoke run: DeiT-Tiny (12 blocks, width 192) at 28x28 px, patch 4, on all of Fashion-MNIST (60k/10k), once per
# method (default BF16 and TetraJet) for EPOCHS epochs each (default 20), then a table of top-1, images/s and peak
# GPU memory per method. Budget: about 8 minutes for both on one H100 (check the per-epoch seconds in the log).
#
#   DATA_PATH  directory of the Fashion-MNIST IDX files (default: data/fashion-mnist if it exists, else
#              /usr/share/datasets/fashion-mnist); copy them there with
#              mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/
#   EPOCHS, METHODS ("bf16 tetrajet"), OUTPUT (output/gpu_smoke), PYTHON (python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-20}
METHODS=${METHODS:-bf16 tetrajet}
OUTPUT=${OUTPUT:-output/gpu_smoke}
if [ -z "${DATA_PATH:-}" ]; then
  DATA_PATH=data/fashion-mnist
  [ -d "$DATA_PATH" ] || DATA_PATH=/usr/share/datasets/fashion-mnist
fi
runs=()
for method in $METHODS; do
  "$PYTHON" main.py --config configs/models/deit_tiny_fmnist.yaml --config "configs/methods/$method.yaml" \
    --data-path "$DATA_PATH" --output "$OUTPUT/$method" --set "train.epochs=$EPOCHS" --set train.device=cuda
  runs+=("$OUTPUT/$method")
done
"$PYTHON" -c "import torch; print(torch.cuda.get_device_name(), 'torch', torch.__version__)"
"$PYTHON" scripts/summarize_runs.py "${runs[@]}"
