#!/usr/bin/env bash
# Table 4 (DeiT-T / DeiT-S): TetraJet against Dampen and Freeze.
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 4 "$@"
