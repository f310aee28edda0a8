#!/usr/bin/env bash
# Table 2: 90-epoch ImageNet top-1 of full precision, Microscaling and TetraJet on five models.
# (The INT4, Q-EMA and Q-Ramping rows come with their method configs.)
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default: all five).
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_tiny deit_small deit_base swin_tiny swin_small}; do
  for method in bf16 microscaling tetrajet; do
    launch "$model" "$method" "$method"
  done
done
