"""The paper's tables as data and the runs they need: definitions (paper), the paper's claims and their verdicts
(claims), profiles, run directories (plan), the command of a run (commands) and a pool running several at once
(jobs). Used by run_tables.py and make_tables.py."""
from .claims import CLAIMS, Claim, Comparison, Gap, Verdict, claim_model, evaluate
from .commands import Launch, command
from .jobs import Job, child_env, run_jobs
from .paper import MODEL_HEADERS, TABLES, Column, PaperTable, Row, Run
from .plan import REPO, PlannedRun, RunConfigFiles, is_finished, plan_runs, resolve
from .profiles import PROFILES, Profile, get_profile

__all__ = ["CLAIMS", "Claim", "Column", "Comparison", "Gap", "Job", "Launch", "MODEL_HEADERS", "PROFILES", "PaperTable",
           "PlannedRun", "Profile", "REPO", "Row", "Run", "RunConfigFiles", "TABLES", "Verdict", "child_env",
           "claim_model", "command", "evaluate", "get_profile", "is_finished", "plan_runs", "resolve", "run_jobs"]
