#!/usr/bin/env bash
# Proxy table runs under a wall-clock limit, for GPU jobs that are killed at a deadline: start every argument list
# as its own scripts/run_tables.py --profile proxy invocation (all at once), wait until they end or LIMIT seconds
# pass, then pack config.yaml, log.jsonl and console.log of every run touched into OUT/runs.tgz (OUT defaults to
# ./proxy_batch_out). Unfinished runs are packed too; copy only finished run directories into results/.
#
#   bash scripts/proxy_batch.sh 540 "--tables 1 --seeds 0 --jobs 6" "--tables 7 --seeds 0 --jobs 3"
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/proxy_batch.sh LIMIT_SECONDS \"RUN_TABLES_ARGS\" [\"RUN_TABLES_ARGS\" ...]" >&2
  exit 2
fi
limit=$1; shift
out=${OUT:-proxy_batch_out}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export OMP_NUM_THREADS=1
stamp=$(mktemp)
i=0
for args in "$@"; do
  # shellcheck disable=SC2086  # each argument list is split into words on purpose
  "$python" scripts/run_tables.py --profile proxy --output results --data-path data/fashion-mnist \
    --python "$python" $args > "$out/batch$i.txt" 2>&1 &
  i=$((i + 1))
done
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$limit" ] && [ -n "$(jobs -r)" ]; do sleep 5; done
find results -newer "$stamp" -type f \( -name log.jsonl -o -name config.yaml -o -name console.log \) \
  | tar czf "$out/runs.tgz" -T -
for log in $(find results -newer "$stamp" -name log.jsonl); do
  echo "$log: $(tail -n 1 "$log" | cut -c1-100)"
done
rm -f "$stamp"
