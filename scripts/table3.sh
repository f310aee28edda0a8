#!/usr/bin/env bash
# Table 3 (DeiT-T): rate of change r(W_Q) and r(Y) at the end of training, oscillation monitor on.
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 3 "$@"
