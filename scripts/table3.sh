#!/usr/bin/env bash
# Table 3 (DeiT-T): rate of change of the quantized weights r(W_Q) and of block 9's output r(Y) at the end of
# training, for TetraJet, + Dampen, + Q-EMA, + Q-Ramping. The oscillation monitor follows OSC_WINDOW steps every
# OSC_INTERVAL steps (records of type "oscillation" in log.jsonl; figures: scripts/plot_oscillation.py).
# Environment: see scripts/launch_common.sh (DATA_PATH required; MODELS default "deit_tiny"); OSC_INTERVAL (1000),
# OSC_WINDOW (30).
source "$(dirname "$0")/launch_common.sh"
monitor=(--set "train.osc_interval=${OSC_INTERVAL:-1000}" --set "train.osc_window=${OSC_WINDOW:-30}"
         --set train.osc_block=blocks.9)
for model in ${MODELS:-deit_tiny}; do
  launch "$model" tetrajet tetrajet "${monitor[@]}"
  launch "$model" tetrajet_dampen tetrajet_dampen "${monitor[@]}"
  launch "$model" "$(tuned tetrajet_qema "$model")" tetrajet_qema "${monitor[@]}"
  launch "$model" "$(tuned tetrajet_qramping "$model")" tetrajet_qramping "${monitor[@]}"
done
