#!/usr/bin/env bash
# Table 5 (DeiT-T): backward rounding (stochastic/deterministic) x what the backward quantizes (double
# quantization / full-precision X and W) x scale rule (truncation-free rceil / OCP floor).
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_tiny").
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_tiny}; do
  for rounding in sr det; do
    for source in doubleq fullprec; do
      for rule in rceil floor; do
        launch "$model" "ablations/table5_${rounding}_${source}_${rule}" "table5_${rounding}_${source}_${rule}"
      done
    done
  done
done
