#!/usr/bin/env bash
# Table 8: TetraJet + Q-EMA with the default beta 0.998 against the tuned betas, five models.
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 8 "$@"
