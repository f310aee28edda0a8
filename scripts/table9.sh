#!/usr/bin/env bash
# Table 9 (DeiT-B): the Q-EMA beta sweep.
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 9 "$@"
