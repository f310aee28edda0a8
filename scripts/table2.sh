#!/usr/bin/env bash
# Table 2: full precision, INT4, Microscaling, TetraJet, + Q-EMA, + Q-Ramping (tuned, Table 8) on five models.
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 2 "$@"
