#!/usr/bin/env bash
# Table 4 (DeiT-T / DeiT-S): TetraJet against the oscillation remedies of Nagel et al. 2022, Dampen and Freeze.
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_tiny deit_small").
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_tiny deit_small}; do
  for method in tetrajet tetrajet_dampen tetrajet_freeze; do
    launch "$model" "$method" "$method"
  done
done
