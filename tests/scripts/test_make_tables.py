"""scripts/make_tables.py: paper tables and the claims checklist from fake run directories (log.jsonl +
config.yaml) where run_tables.py puts them, exact Markdown; the figures."""
import json

import pytest
import yaml

import make_tables
from table_runs import TABLES, get_profile, resolve
from table_runs.paper import BF16, DAMPEN, FREEZE, MICROSCALING, MONITORED, QEMA, QRAMPING, TETRAJET

IMAGENET = get_profile("imagenet")
PROXY = get_profile("proxy")


def write_run(run_dir, accs, epochs=90, seed=0, oscillation=()):
    """A run directory as main.py leaves it: config.yaml and a log.jsonl with one epoch record per accuracy."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": epochs, "seed": seed}}))
    records = [{"type": "run", "method": "m", "recipe": "m", "model": "x"}]
    for epoch, acc in enumerate(accs):
        records.append({"type": "epoch", "epoch": epoch, "test_acc1": acc, "best_acc1": max(accs[:epoch + 1]),
                        "images_per_s": 100.0, "peak_mem_mib": None, "train_time_s": 60.0})
    records += [{"type": "oscillation", "step": step, "epoch": step / 100, "r_w": 0.1, "r_q": r_q, "r_y": r_y,
                 "osc_share": 0.01, "quantconf_mean": 0.5,
                 "quantconf_hist": {"edges": [0.0, 0.5, 1.0], "counts": [3, 1]}}
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
    write_run(seed_dir(tmp_path, "deit_tiny", FREEZE, epochs=10, profile=PROXY), [80.0], epochs=10)
    return tmp_path


@pytest.fixture
def proxy_root(tmp_path):
    """Finished proxy runs of Tables 2 and 3 (the profile monitors every quantized run), and one unfinished."""
    def run(method, seed, acc, r_q=None, epochs_done=10):
        oscillation = [(100, 0.02, 0.1), (200, r_q, 0.08)] if r_q is not None else ()
        write_run(seed_dir(tmp_path, "deit_tiny", method, seed=seed, epochs=10, profile=PROXY),
                  [acc] * epochs_done, epochs=10, seed=seed, oscillation=oscillation)

    for seed, acc in enumerate([79.0, 80.0, 81.0]):
        run(BF16, seed, acc + 1)
        run(TETRAJET, seed, acc, r_q=[0.0090, 0.0094, 0.0098][seed])
        run(QRAMPING, seed, acc, r_q=0.0085)
    for seed, acc in enumerate([77.0, 78.0]):
        run(MICROSCALING, seed, acc, r_q=0.0095)
    for seed, (acc, r_q) in enumerate([(80.5, 0.0060), (81.5, 0.0070)]):
        run(QEMA, seed, acc, r_q=r_q)
    run(QEMA, 2, 50.0, r_q=0.0010, epochs_done=1)  # unfinished: out of the checklist
    return tmp_path


LEGEND = ("Cell: ours, mean ± sample std over the runs (n = runs, i.e. seeds; k/N ep = the least advanced unfinished "
          "one) / the paper's number (ours - paper); – = no run yet.")


def test_table_4_and_3_markdown(root, capsys):
    assert make_tables.main([str(root), "--tables", "4", "3"]) == 0
    tables, checklist = capsys.readouterr().out.split("\n\n### Claims of the paper, checked on DeiT-T\n\n")
    assert tables == "\n".join([
        "### Table 4: Dampen and Freeze (top-1 %, ours: final)",
        "",
        "| method | DeiT-T | DeiT-S |",
        "|---|---|---|",
        "| TetraJet (`tetrajet`) | 59.20 ± 0.28 (n=2, 3/90 ep) / paper 59.75 (-0.55) | "
        "65.50 (n=1, 2/90 ep) / paper 71.03 (-5.53) |",
        "| + Dampen (`tetrajet_dampen`) | 59.75 (n=1, 3/90 ep) / paper 59.75 (+0.00) | – / paper 70.75 |",
        "| + Freeze (`tetrajet_freeze`) | – / paper 16.45 | – / paper 22.04 |",
        "",
        LEGEND,
        "",
        "### Table 3: rate of change at the end of training (DeiT-T) (rate of change, last oscillation record)",
        "",
        "| method | r(W_Q) | r(Y), block at 3/4 depth |",
        "|---|---|---|",
        "| TetraJet (`tetrajet`) | 0.0045 ± 0.0007 (n=2, 1/90 ep) / paper 0.0045 (+0.0000) | "
        "0.0401 ± 0.0001 (n=2, 1/90 ep) / paper 0.0401 (+0.0000) |",
        "| + Dampen (`tetrajet_dampen`) | n/a (n=1) / paper 0.0044 | n/a (n=1) / paper 0.0394 |",
        "| + Q-EMA (`tetrajet_qema`) | – / paper 0.0018 | – / paper 0.0251 |",
        "| + Q-Ramping (`tetrajet_qramping`) | – / paper 0.0028 | – / paper 0.0318 |",
        "",
        LEGEND,
    ])
    # every run is unfinished: no claim has two finished seeds a side
    assert checklist.count(" | not run |") == 14
    assert "| Dampen does not help (Table 4) | 59.75 vs 59.75 | finished seeds: `tetrajet_dampen` 0, `tetrajet` 0 | " \
           "– | not run |" in checklist


def test_shared_rows_and_profiles(root, capsys):
    assert make_tables.main([str(root), "--tables", "5"]) == 0
    assert "| stochastic, double-Q, truncation-free (= TetraJet) (`tetrajet`) | 59.20 ± 0.28 (n=2, 3/90 ep) / " \
           "paper 59.75 (-0.55) |" in capsys.readouterr().out
    assert make_tables.main([str(root), "--tables", "4", "--profile", "proxy"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[6] == "| + Freeze (`tetrajet_freeze`) | 80.00 (n=1, 1/10 ep) / paper 16.45 | – / paper 22.04 |"
    assert rows[8].endswith("/ the paper's number (another data set: no difference); – = no run yet.")


def test_metric_best(root, capsys):
    make_tables.main([str(root), "--tables", "4", "--metric", "best"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[4].startswith("| TetraJet (`tetrajet`) | 59.30 ± 0.42 (n=2, 3/90 ep) / paper 59.75 (-0.45) |")


def test_checklist(proxy_root, capsys):
    assert make_tables.main([str(proxy_root), "--profile", "proxy", "--checklist-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["### Claims of the paper, checked on DeiT-T", "",
                         "| claim | paper | ours (n = finished seeds) | d ± se (d/se) | verdict |",
                         "|---|---|---|---|---|"]
    assert len(lines) == 4 + 14 + 2 and not any(line.startswith("### Table") for line in lines)
    assert "| TetraJet beats Microscaling (Table 2) | 59.75 vs 58.56 | 80.00 vs 77.50 (n=3, 2) | " \
           "+2.50 ± 0.76 (+3.3) | holds |" in lines
    assert "| Q-EMA beats TetraJet (Table 2) | 60.00 vs 59.75 | 81.00 vs 80.00 (n=2, 3) | +1.00 ± 0.76 (+1.3) " \
           "| inconclusive at this spread |" in lines
    assert "| Q-EMA lowers r(W_Q) (Table 3) | 0.0018 vs 0.0045 | 0.0065 vs 0.0094 (n=2, 3) | " \
           "+0.0029 ± 0.0006 (+5.3) | holds |" in lines
    assert "| Q-Ramping lowers r(W_Q) (Table 3) | 0.0028 vs 0.0045 | 0.0085 vs 0.0094 (n=3, 3) | " \
           "+0.0009 ± 0.0002 (+3.9) | holds |" in lines
    assert "| BF16 beats Microscaling (Table 2; the gap the proxy profile is chosen for) | 63.73 vs 58.56 | " \
           "81.00 vs 77.50 (n=3, 2) | +3.50 ± 0.76 (+4.6) | holds |" in lines
    assert "| Freeze collapses, 10 points or more below TetraJet (Table 4) | 59.75 vs 16.45 | " \
           "finished seeds: `tetrajet_freeze` 0 | – | not run |" in lines


def test_figures_are_written(proxy_root, tmp_path, capsys):
    figures = tmp_path / "figs"
    assert make_tables.main([str(proxy_root), "--profile", "proxy", "--figures", str(figures)]) == 0
    pngs = sorted(figures.iterdir())
    # Tables 2 and 3 have more than half their rows run; 1, 4, 5, 7 and 8 one or two rows each
    assert [p.name for p in pngs] == ["proxy_osc_share.png", "proxy_quantconf.png", "proxy_r_wq.png",
                                      "proxy_r_y.png", "proxy_table2.png", "proxy_table3.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") and 5_000 < p.stat().st_size < 150_000 for p in pngs)


def test_monitored_runs_are_those_with_oscillation_records(proxy_root):
    cells = make_tables.collect_cells([TABLES[2], TABLES[3]], proxy_root, PROXY, 10, "final")
    groups = make_tables.monitored_runs(cells, "deit_tiny")
    assert [(label, len(seeds)) for label, seeds in groups] == [
        ("microscaling", 2), ("tetrajet", 3), ("tetrajet_qema", 3), ("tetrajet_qramping", 3)]
    assert [record["r_q"] for record in groups[1][1][2]] == [0.02, 0.0098]


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
    assert "| TetraJet (`tetrajet`) | 40.00 (n=1, 1/30 ep) / paper 59.75 (-19.75) | – / paper 71.03 |" \
        in capsys.readouterr().out
    write_run(seed_dir(root, "deit_tiny", FREEZE), [10.0], epochs=30)
    assert make_tables.main([str(root), "--tables", "4"]) == 1
    assert "configured for other epochs than the 90 of their directory" in capsys.readouterr().err


def test_paper_tables_are_complete():
    assert sorted(TABLES) == list(range(1, 11))
    for table in TABLES.values():
        assert all(len(row.paper) == len(table.columns) for row in table.rows)
        assert len({row.run for row in table.rows}) == len(table.rows)
        assert len({row.label for row in table.rows}) == len(table.rows)
