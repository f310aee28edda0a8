#!/usr/bin/env bash
# Table 9 (DeiT-B): the Q-EMA beta sweep.
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_base"); BETAS to override.
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_base}; do
  for beta in ${BETAS:-0.993 0.995 0.997 0.998 0.999 0.9995}; do
    launch "$model" tetrajet_qema "tetrajet_qema_beta$beta" --set "method.recipe.qema_beta=$beta" \
      --set "method.name=tetrajet_qema_beta$beta"
  done
done
