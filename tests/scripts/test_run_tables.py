"""scripts/run_tables.py: one directory per distinct configuration across all tables, valid main.py commands, and
--jobs running several commands at once and reporting failures."""
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import main
import run_tables
from configs import config_to_dict
from table_runs import TABLES, Job, child_env, run_jobs

PROFILES = ["imagenet", "proxy"]


def dry_run(capsys, tmp_path, *args):
    """(directory, main.py RunConfig) of every line run_tables --dry-run prints, and its '# ' notes."""
    assert run_tables.main(["--dry-run", "--data-path", "/data", "--output", str(tmp_path), *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = []
    for line in (line for line in lines if not line.startswith("# ")):
        directory, text = line.split("\t")
        argv = shlex.split(text)
        config = main.config_from_args(main.parse_args(argv[argv.index("main.py") + 1:]))
        assert config.output_dir == directory and argv[-2:] == ["--resume", "auto"]
        runs.append((directory, config))
    return runs, [line for line in lines if line.startswith("# ")]


def _identity(config):
    data = config_to_dict(config)
    del data["output_dir"]
    return json.dumps(data, sort_keys=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_table_yields_one_directory_per_configuration(capsys, tmp_path, profile):
    runs, _ = dry_run(capsys, tmp_path, "--profile", profile, "--seeds", "0", "1")
    directories = [directory for directory, _ in runs]
    assert len(set(directories)) == len(directories)
    by_config = {}
    for directory, config in runs:
        by_config.setdefault(_identity(config), set()).add(directory)
    assert all(len(dirs) == 1 for dirs in by_config.values())
    assert len(by_config) == len(runs)
    assert {int(d.rsplit("seed", 1)[1]) for d in directories} == {0, 1}
    assert all(config.train.seed == int(d.rsplit("seed", 1)[1]) for d, config in runs)


@pytest.mark.parametrize("profile", PROFILES)
def test_shared_rows_share_and_monitored_runs_only_where_the_profile_monitors_all(capsys, tmp_path, profile):
    """ImageNet: Table 3's monitored runs are configurations of their own. Proxy: every run is monitored, so Table 3's
    rows are Table 2's and 4's runs."""
    def dirs(*tables):
        return {d for d, _ in dry_run(capsys, tmp_path, "--profile", profile, "--tables", *tables)[0]}

    table3, table2_4 = dirs("3"), dirs("2", "4")
    monitored_apart = profile == "imagenet"
    assert len(table3) == 4 and (not table3 & table2_4 if monitored_apart else table3 <= table2_4)
    tiny = [d for d in table2_4 if "/deit_tiny/" in d]
    tetrajet, = [d for d in tiny if "/tetrajet-" in d]
    microscaling, = [d for d in tiny if "/microscaling-" in d]
    assert tetrajet in dirs("1") and tetrajet in dirs("5") and tetrajet in dirs("7") and microscaling in dirs("5")
    shared_with_table1 = {d for d in dirs("1") if "/bf16-" in d or "/tetrajet-" in d}  # Table 2's too
    assert len(dirs("1", "2", "3", "4", "5", "7")) == \
        len(dirs("1")) + len(dirs("2", "4")) + 4 * monitored_apart + 6 + 3 - len(shared_with_table1)


def test_counts_and_settings(capsys, tmp_path):
    runs, _ = dry_run(capsys, tmp_path, "--tables", *map(str, TABLES))
    assert len(runs) == 78  # of 99 table rows x models: shared runs count once
    monitored = [c for _, c in dry_run(capsys, tmp_path, "--tables", "3")[0]]
    assert [(c.train.osc_interval, c.train.osc_block) for c in monitored] == [(1000, "blocks.9")] * 4
    betas = sorted(c.method.resolved.qema_beta for _, c in dry_run(capsys, tmp_path, "--tables", "9")[0])
    assert betas == [0.993, 0.995, 0.997, 0.998, 0.999, 0.9995]
    tuned = {c.model.name: c.method.resolved.qema_beta for _, c in dry_run(capsys, tmp_path, "--tables", "2")[0]
             if c.method.name == "tetrajet_qema"}
    assert tuned == {"deit_tiny_patch16_224": 0.9983, "deit_small_patch16_224": 0.9972,
                     "deit_base_patch16_224": 0.999, "swin_tiny_patch4_window7_224": 0.9975,
                     "swin_small_patch4_window7_224": 0.998}
    assert all(c.train.epochs == 30 for _, c in dry_run(capsys, tmp_path, "--tables", "4", "--epochs", "30")[0])


def test_proxy_runs_deit_tiny_rows_only(capsys, tmp_path):
    runs, notes = dry_run(capsys, tmp_path, "--profile", "proxy", "--tables", "2", "6")
    assert len(runs) == 6 and all(c.data.dataset == "fashion_mnist" and c.model.img_size == 28 for _, c in runs)
    assert notes == ["# table 2: profile 'proxy' has no deit_small, deit_base, swin_tiny, swin_small; those runs are "
                     "skipped", "# table 6: profile 'proxy' has no deit_base; those runs are skipped"]


def test_labels_select_rows_and_unknown_labels_are_named(capsys, tmp_path):
    runs, _ = dry_run(capsys, tmp_path, "--profile", "proxy", "--tables", "4", "--seeds", "0", "1",
                      "--labels", "tetrajet_dampen", "tetrajet_freeze")
    assert sorted(Path(d).parent.name.rsplit("-", 1)[0] for d, _ in runs) == ["tetrajet_dampen"] * 2 + [
        "tetrajet_freeze"] * 2
    assert run_tables.main(["--dry-run", "--profile", "proxy", "--tables", "4", "--labels", "dampen"]) == 2
    err = capsys.readouterr().err
    assert "--labels dampen: not a run of these tables" in err and "tetrajet_dampen" in err


def test_errors(capsys, tmp_path):
    assert run_tables.main(["--dry-run", "--tables", "2"]) == 2
    assert "needs --data-path" in capsys.readouterr().err
    assert run_tables.main(["--dry-run", "--data-path", "/d", "--jobs", "2"]) == 2
    assert "--jobs 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_tables.main(["--profile", "laptop"])
    assert "invalid choice: 'laptop'" in capsys.readouterr().err


def test_jobs_run_at_once_and_report_failures(tmp_path, capsys):
    sleep = "import sys, time; time.sleep(1); sys.exit(int(sys.argv[1]))"
    jobs = [Job(f"job{i}", [sys.executable, "-c", sleep, str(code)], tmp_path / f"job{i}" / "out.log")
            for i, code in enumerate((0, 3, 0, 0))]
    start = time.monotonic()
    failed = run_jobs(jobs, 4, cwd=tmp_path, env=child_env(4))
    assert time.monotonic() - start < 3.5
    assert [job.name for job in failed] == ["job1"]
    out = capsys.readouterr().out
    assert out.count("started ") == 4 and "FAILED (exit 3): job1" in out and "3 done, 1 failed, 4 total" in out
    assert all(job.log.is_file() for job in jobs)
    assert child_env(4, {})["OMP_NUM_THREADS"] == "1" and child_env(4, {"OMP_NUM_THREADS": "8"}) == \
        {"OMP_NUM_THREADS": "8"} and child_env(1, {}) == {}


def test_cli_runs_each_once_and_names_failures(tmp_path, capsys):
    fake = tmp_path / "fake_python"  # stands in for the interpreter: fails the seed-1 runs
    fake.write_text("#!/bin/sh\necho \"$@\"\ncase \"$*\" in *train.seed=1*) exit 1;; esac\n")
    fake.chmod(0o755)
    root = tmp_path / "out"
    argv = ["--profile", "proxy", "--tables", "7", "--seeds", "0", "1", "--jobs", "3", "--python", str(fake),
            "--output", str(root)]
    assert run_tables.main(argv) == 1
    captured = capsys.readouterr()
    logs = sorted(root.rglob("console.log"))
    assert len(logs) == 8 and captured.out.count("started ") == 8
    assert "4 of 8 runs failed" in captured.err and "seed1" in captured.err and "seed0" not in captured.err
    assert all("main.py --config" in log.read_text() for log in logs)


def test_osc_block_follows_the_model_depth(tmp_path):
    from table_runs.plan import osc_block

    shallow = tmp_path / "shallow.yaml"
    shallow.write_text("model:\n  timm_kwargs: {depth: 4}\n")
    assert osc_block(str(shallow)) == "blocks.3"
    assert osc_block("configs/models/deit_tiny.yaml") == "blocks.9"


def test_finished_runs_are_skipped_without_checkpoints(capsys, tmp_path):
    """A run directory whose log records the last epoch (results/ keeps no checkpoints) is not trained again; one
    that stopped short is."""
    runs, _ = dry_run(capsys, tmp_path, "--profile", "proxy", "--tables", "2", "--seeds", "0")
    (done, _), (short, _) = runs[0], runs[1]
    for directory, last_epoch in ((done, 9), (short, 8)):
        Path(directory).mkdir(parents=True)
        records = [{"type": "run"}] + [{"type": "epoch", "epoch": e} for e in range(last_epoch + 1)]
        (Path(directory) / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    again, notes = dry_run(capsys, tmp_path, "--profile", "proxy", "--tables", "2", "--seeds", "0")
    assert [d for d, _ in again] == [d for d, _ in runs[1:]]
    assert f"# finished, skipped: {done}" in notes


def test_proxy_batch_starts_each_argument_list_and_packs_into_out(tmp_path):
    script = Path(run_tables.__file__).with_name("proxy_batch.sh")
    env = {"OUT": str(tmp_path), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(script), "60", "--tables 4 --dry-run", "--tables 7 --dry-run"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tetrajet_dampen-" in (tmp_path / "batch0.txt").read_text()
    assert "table7_e3m0_e3m0-" in (tmp_path / "batch1.txt").read_text()
    assert (tmp_path / "runs.tgz").is_file()
    assert subprocess.run(["bash", str(script), "60"], capture_output=True).returncode == 2
