#!/usr/bin/env bash
# Table 7 (DeiT-T): element formats of activations & weights / gradients (E2M1 / E3M0).
# The runs are defined in scripts/table_runs/paper.py; environment and options: scripts/launch_common.sh.
source "$(dirname "$0")/launch_common.sh"
run_table 7 "$@"
