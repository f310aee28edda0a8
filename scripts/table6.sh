#!/usr/bin/env bash
# Table 6 (DeiT-B): TetraJet without the weight (and activation) quantizers, + Q-EMA, + Q-Ramping.
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 6 "$@"
