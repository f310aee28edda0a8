#!/usr/bin/env bash
# Table 10 (DeiT-B): the Q-Ramping (k1, k2) sweep.
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_base"); PAIRS to override
# (space-separated k1,k2 pairs).
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_base}; do
  for pair in ${PAIRS:-16,3 16,4 16,5 16,6 16,7 16,8 8,5 12,5 20,5}; do
    k1=${pair%,*}
    k2=${pair#*,}
    launch "$model" tetrajet_qramping "tetrajet_qramping_k1_${k1}_k2_${k2}" \
      --set "method.recipe.qramping.k1=$k1" --set "method.recipe.qramping.k2=$k2" \
      --set "method.name=tetrajet_qramping_k1_${k1}_k2_${k2}"
  done
done
