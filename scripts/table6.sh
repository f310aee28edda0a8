#!/usr/bin/env bash
# Table 6 (DeiT-B): TetraJet, without the weight quantizer, without the weight and activation quantizers, + Q-EMA,
# + Q-Ramping (Table 8's settings).
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_base").
source "$(dirname "$0")/launch_common.sh"
for model in ${MODELS:-deit_base}; do
  for method in tetrajet tetrajet_no_weight_q tetrajet_no_weight_act_q; do
    launch "$model" "$method" "$method"
  done
  launch "$model" "$(tuned tetrajet_qema "$model")" tetrajet_qema
  launch "$model" "$(tuned tetrajet_qramping "$model")" tetrajet_qramping
done
