#!/usr/bin/env bash
# Table 7 (DeiT-T): element format of activations and weights x element format of gradients (E2M1 / E3M0).
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_tiny").
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_tiny}; do
  for forward in e2m1 e3m0; do
    for backward in e2m1 e3m0; do
      launch "$model" "ablations/table7_${forward}_${backward}" "table7_${forward}_${backward}"
    done
  done
done
