# Sourced by the table launchers: environment defaults and `launch`, one training run through torchrun.
#
#   DATA_PATH    ImageNet ImageFolder root holding train/ and val/ (required; absolute, or relative to the repo root)
#   NPROC        processes (GPUs) per node, default 4 (the paper's setup; the model configs' per-GPU batch sizes
#                assume it: the learning rate follows the global batch either way)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   several nodes: run the same command on each with its NODE_RANK
#   OUTPUT       output root, default output/; a run goes to $OUTPUT/<model>-<epochs>ep/<method>
#   EPOCHS       default 90 (PAPER.md)
#   MODELS       space-separated model configs (configs/models/<name>.yaml); each table has its own default
#   PYTHON       interpreter, default python
#   DRY_RUN=1    print the commands instead of running them
#   QUICK=1      a quick look on Fashion-MNIST: defaults become MODELS=deit_tiny_fmnist (DeiT-Tiny at 28 px),
#                EPOCHS=10, NPROC=1, OUTPUT=output/quick, DATA_PATH=/usr/share/datasets/fashion-mnist
# Runs restart with --resume auto, so re-running a table continues or skips the runs already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${QUICK:-0}" = 1 ]; then
  DATA_PATH=${DATA_PATH:-/usr/share/datasets/fashion-mnist}
  MODELS=${MODELS:-deit_tiny_fmnist}
  EPOCHS=${EPOCHS:-10}
  NPROC=${NPROC:-1}
  OUTPUT=${OUTPUT:-output/quick}
fi
: "${DATA_PATH:?set DATA_PATH to the ImageNet ImageFolder root (train/<class>/..., val/<class>/...)}"
NPROC=${NPROC:-4}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
OUTPUT=${OUTPUT:-output}
EPOCHS=${EPOCHS:-90}
PYTHON=${PYTHON:-python}

# launch MODEL METHOD_FILE LABEL [main.py arguments...]
launch() {
  local model=$1 method=$2 label=$3
  shift 3
  local cmd=("$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK"
             --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --nproc_per_node="$NPROC"
             main.py --config "configs/models/$model.yaml" --config "configs/methods/$method.yaml"
             --data-path "$DATA_PATH" --output "$OUTPUT/$model-${EPOCHS}ep/$label"
             --set "train.epochs=$EPOCHS" --resume auto "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
  else
    "${cmd[@]}"
  fi
}

# tuned METHOD MODEL: the method file with Table 8's settings for MODEL (configs/methods/tuned/), else METHOD's own.
tuned() {
  if [ -f "configs/methods/tuned/$1_$2.yaml" ]; then
    echo "tuned/$1_$2"
  else
    echo "$1"
  fi
}
