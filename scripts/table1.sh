#!/usr/bin/env bash
# Table 1: TetraJet's six quantizers one at a time, against full precision and all six (DeiT-T / DeiT-S).
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_tiny deit_small").
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_tiny deit_small}; do
  launch "$model" bf16 bf16
  for quantizer in q1 q2 q3 q4 q5 q6; do
    launch "$model" "ablations/tetrajet_only_$quantizer" "tetrajet_only_$quantizer"
  done
  launch "$model" tetrajet tetrajet
done
