#!/usr/bin/env bash
# Table 5 (DeiT-T): backward rounding x what the backward quantizes x scale rule.
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 5 "$@"
