#!/usr/bin/env bash
# Table 8: TetraJet + Q-EMA with the default beta 0.998 on five models (the tuned rows are Table 2's; the tuned
# values live in configs/methods/tuned/). Q-Ramping's tuned k2 are Table 2's runs as well.
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default: all five).
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_tiny deit_small deit_base swin_tiny swin_small}; do
  launch "$model" tetrajet_qema tetrajet_qema_beta0.998 --set method.name=tetrajet_qema_beta0.998
done
