# Sourced by the table launchers: `run_table N [run_tables.py options...]` runs scripts/run_tables.py --tables N with
# options from the environment (options given on the command line come later and win):
#
#   DATA_PATH    --data-path: ImageNet ImageFolder root holding train/ and val/ (absolute, or relative to the repo root)
#   NPROC        --nproc: processes (GPUs) per node (default 4, the paper's setup)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   several nodes: run the same command on each with its NODE_RANK
#   OUTPUT       --output: output root (default output/)
#   EPOCHS       --epochs (default: the profile's, 90 for ImageNet)
#   MODELS       --models: space-separated, a subset of the table's models (deit_tiny deit_small ...)
#   PYTHON       interpreter (default python)
#   DRY_RUN=1    --dry-run: print the runs instead of starting them
#   QUICK=1      --profile proxy: the DeiT-T rows on Fashion-MNIST, one process per run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run_table() {
  local python=${PYTHON:-python}
  local args=(--tables "$1" --python "$python")
  shift
  [ "${QUICK:-0}" = 1 ] && args+=(--profile proxy)
  [ -n "${DATA_PATH:-}" ] && args+=(--data-path "$DATA_PATH")
  [ -n "${NPROC:-}" ] && args+=(--nproc "$NPROC")
  [ -n "${NNODES:-}" ] && args+=(--nnodes "$NNODES")
  [ -n "${NODE_RANK:-}" ] && args+=(--node-rank "$NODE_RANK")
  [ -n "${MASTER_ADDR:-}" ] && args+=(--master-addr "$MASTER_ADDR")
  [ -n "${MASTER_PORT:-}" ] && args+=(--master-port "$MASTER_PORT")
  [ -n "${OUTPUT:-}" ] && args+=(--output "$OUTPUT")
  [ -n "${EPOCHS:-}" ] && args+=(--epochs "$EPOCHS")
  # shellcheck disable=SC2206  # MODELS is a space-separated list
  [ -n "${MODELS:-}" ] && args+=(--models $MODELS)
  [ "${DRY_RUN:-0}" = 1 ] && args+=(--dry-run)
  exec "$python" scripts/run_tables.py "${args[@]}" "$@"
}
