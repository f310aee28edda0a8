"""scripts/make_tables.py: paper tables from fake run directories (log.jsonl + config.yaml) where run_tables.py
puts them, exact Markdown."""
import json

import pytest
import yaml

import make_tables
from table_runs import TABLES, get_profile, resolve
from table_runs.paper import DAMPEN, FREEZE, MONITORED, TETRAJET

IMAGENET = get_profile("imagenet")


def write_run(run_dir, accs, epochs=90, seed=0, oscillation=()):
    """A run directory as main.py leaves it: config.yaml and a log.jsonl with one epoch record per accuracy."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": epochs, "seed": seed}}))
    records = [{"type": "run", "method": "m", "recipe": "m", "model": "x"}]
    for epoch, acc in enumerate(accs):
        records.append({"type": "epoch", "epoch": epoch, "test_acc1": acc, "best_acc1": max(accs[:epoch + 1]),
                        "images_per_s": 100.0, "peak_mem_mib": None, "train_time_s": 60.0})
    records += [{"type": "oscillation", "step": step, "r_w": 0.1, "r_q": r_q, "r_y": r_y}
                for step, r_q, r_y in oscillation]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def seed_dir(root, model, run, seed=0, epochs=90, profile=IMAGENET):
    return resolve(profile, model, run, epochs).directory(root, profile) / f"seed{seed}"


@pytest.fixture
def root(tmp_path):
    monitored = MONITORED[TETRAJET]
    write_run(seed_dir(tmp_path, "deit_tiny", TETRAJET), [50.0, 58.8, 59.0])
    write_run(seed_dir(tmp_path, "deit_tiny", TETRAJET, seed=1), [50.0, 59.6, 59.4], seed=1)
    write_run(seed_dir(tmp_path, "deit_tiny", monitored), [50.0, 58.8],
              oscillation=[(100, 0.9, 0.9), (200, 0.0040, 0.0400)])
    write_run(seed_dir(tmp_path, "deit_tiny", monitored, seed=1), [50.0], seed=1, oscillation=[(200, 0.0050, 0.0402)])
    write_run(seed_dir(tmp_path, "deit_tiny", MONITORED[DAMPEN]), [58.0])
    write_run(seed_dir(tmp_path, "deit_tiny", DAMPEN), [58.0, 59.0, 59.75])
    write_run(seed_dir(tmp_path, "deit_small", TETRAJET), [60.0, 65.5])
    proxy = get_profile("proxy")
    write_run(seed_dir(tmp_path, "deit_tiny", FREEZE, epochs=10, profile=proxy), [80.0], epochs=10)
    return tmp_path


LEGEND = "Cell: ours / paper (ours - paper), n = runs (seeds), range = max - min over them; – = no run yet."


def test_table_4_and_3_markdown(root, capsys):
    assert make_tables.main([str(root), "--tables", "4", "3"]) == 0
    assert capsys.readouterr().out == "\n".join([
        "### Table 4: Dampen and Freeze (top-1 %, ours: final)",
        "",
        "| method | DeiT-T | DeiT-S |",
        "|---|---|---|",
        "| TetraJet (`tetrajet`) | 59.20 (3/90 ep) / 59.75 (-0.55), n=2, range 0.40 | "
        "65.50 (2/90 ep) / 71.03 (-5.53), n=1 |",
        "| + Dampen (`tetrajet_dampen`) | 59.75 (3/90 ep) / 59.75 (+0.00), n=1 | – / 70.75 |",
        "| + Freeze (`tetrajet_freeze`) | – / 16.45 | – / 22.04 |",
        "",
        LEGEND,
        "",
        "### Table 3: rate of change at the end of training (DeiT-T) (rate of change, last oscillation record)",
        "",
        "| method | r(W_Q) | r(Y), block 9 |",
        "|---|---|---|",
        "| TetraJet (`tetrajet`) | 0.0045 (1/90 ep) / 0.0045 (+0.0000), n=2, range 0.0010 | "
        "0.0401 (1/90 ep) / 0.0401 (+0.0000), n=2, range 0.0002 |",
        "| + Dampen (`tetrajet_dampen`) | n/a / 0.0044, n=1 | n/a / 0.0394, n=1 |",
        "| + Q-EMA (`tetrajet_qema`) | – / 0.0018 | – / 0.0251 |",
        "| + Q-Ramping (`tetrajet_qramping`) | – / 0.0028 | – / 0.0318 |",
        "",
        LEGEND,
    ]) + "\n"


def test_shared_rows_and_profiles(root, capsys):
    assert make_tables.main([str(root), "--tables", "5"]) == 0
    assert "| stochastic, double-Q, truncation-free (= TetraJet) (`tetrajet`) | 59.20 (3/90 ep) / 59.75 (-0.55), " \
           "n=2, range 0.40 |" in capsys.readouterr().out
    assert make_tables.main([str(root), "--tables", "4", "--profile", "proxy"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[6] == "| + Freeze (`tetrajet_freeze`) | 80.00 (1/10 ep) / 16.45 (+63.55), n=1 | – / 22.04 |"


def test_metric_best(root, capsys):
    make_tables.main([str(root), "--tables", "4", "--metric", "best"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[4].startswith("| TetraJet (`tetrajet`) | 59.30 (3/90 ep) / 59.75 (-0.45), n=2, range 0.60 |")


def test_figures_are_written(root, tmp_path):
    figures = tmp_path / "figs"
    assert make_tables.main([str(root), "--tables", "2", "3", "--figures", str(figures)]) == 0
    pngs = sorted(figures.glob("*.png"))
    assert [p.name for p in pngs] == ["table2.png", "table3.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_errors(root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_tables.main([str(empty)]) == 1
    assert "no runs of these tables" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_tables.main([str(root), "--tables", "11"])
    assert "choose from 1, 2, 3, 4, 5, 6, 7, 8, 9, 10" in capsys.readouterr().err
    assert make_tables.main([str(root), "--tables", "4", "--epochs", "30"]) == 1
    assert "no runs of these tables" in capsys.readouterr().err
    write_run(seed_dir(root, "deit_tiny", TETRAJET, epochs=30), [40.0], epochs=30)
    assert make_tables.main([str(root), "--tables", "4", "--epochs", "30"]) == 0
    assert "| TetraJet (`tetrajet`) | 40.00 (1/30 ep) / 59.75 (-19.75), n=1 | – / 71.03 |" in capsys.readouterr().out
    write_run(seed_dir(root, "deit_tiny", FREEZE), [10.0], epochs=30)
    assert make_tables.main([str(root), "--tables", "4"]) == 1
    assert "configured for other epochs than the 90 of their directory" in capsys.readouterr().err


def test_paper_tables_are_complete():
    assert sorted(TABLES) == list(range(1, 11))
    for table in TABLES.values():
        assert all(len(row.paper) == len(table.columns) for row in table.rows)
        assert len({row.run for row in table.rows}) == len(table.rows)
        assert len({row.label for row in table.rows}) == len(table.rows)
