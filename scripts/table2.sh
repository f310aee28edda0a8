#!/usr/bin/env bash
# Table 2: 90-epoch ImageNet top-1 of full precision, Microscaling, TetraJet, TetraJet + Q-EMA and TetraJet +
# Q-Ramping on five models, and the INT4 per-tensor baseline; Q-EMA and Q-Ramping with Table 8's per-model settings
# (configs/methods/tuned/).
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default: all five).
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_tiny deit_small deit_base swin_tiny swin_small}; do
  for method in bf16 int4 microscaling tetrajet; do
    launch "$model" "$method" "$method"
  done
  launch "$model" "$(tuned tetrajet_qema "$model")" tetrajet_qema
  launch "$model" "$(tuned tetrajet_qramping "$model")" tetrajet_qramping
done
