#!/usr/bin/env bash
# Table 1: TetraJet's six quantizers one at a time, against full precision and all six (DeiT-T / DeiT-S).
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 1 "$@"
