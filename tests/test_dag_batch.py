"""A large data set in slices: Snakemake's ``--batch all_outputs=i/n``.

Snakemake batches the DAG over the inputs of one aggregating rule. Our
aggregate, ``all_outputs``, has a new output every run (a batch whose
aggregate output already exists runs nothing), and a batched run reads the
targets table made beforehand (Snakemake drops the jobs behind a checkpoint
when it batches)."""

from __future__ import annotations

import os
import time

import pytest

from nano_banana_aug import targets as targets_mod
from nano_banana_aug.errors import UserError
from tests.helpers import snakemake
from tests.test_e2e_pipeline import make_run, manifest_rows, outputs, run

TABLE = "data/aug/.pipeline/targets.csv"


def make_table(wf):
    """The checkpoint alone, as the README says (the target before --configfile, which takes several values)."""
    res = snakemake(wf, TABLE, "-j", "1", "--configfile", "run.yaml")
    assert res.returncode == 0, res.stderr[-3000:]


def test_dag_batch_arg_reads_the_command_line():
    assert targets_mod.dag_batch_arg(["snakemake", "-j", "8"]) is None
    assert targets_mod.dag_batch_arg(["snakemake", "--batch", "all_outputs=2/5", "-j", "8"]) == "all_outputs=2/5"
    assert targets_mod.dag_batch_arg(["snakemake", "--batch=all_outputs=1/3"]) == "all_outputs=1/3"


def test_check_dag_batch_names_what_to_do(tmp_path):
    table, train, settings = tmp_path / "targets.csv", tmp_path / "train.csv", tmp_path / "settings.json"
    train.write_text("x\n")
    with pytest.raises(UserError, match="batch over the rule 'all_outputs'"):
        targets_mod.check_dag_batch("manifest=1/2", table, train, settings)
    with pytest.raises(UserError, match=r"not there: make it first with: snakemake .*targets.csv --configfile run.yaml"):
        targets_mod.check_dag_batch("all_outputs=1/2", table, train, settings, "--configfile run.yaml")
    table.write_text("image_id\n")
    with pytest.raises(UserError, match="other data settings"):
        targets_mod.check_dag_batch("all_outputs=1/2", table, train, settings)
    settings.write_text("{}")
    os.utime(train, (time.time() + 60, time.time() + 60))
    with pytest.raises(UserError, match="newer than the targets table"):
        targets_mod.check_dag_batch("all_outputs=1/2", table, train, settings)
    os.utime(train, (time.time() - 60, time.time() - 60))
    targets_mod.check_dag_batch("all_outputs=1/2", table, train, settings)
    with pytest.raises(UserError, match="does not combine with api.mode: batch"):
        targets_mod.check_dag_batch("all_outputs=1/2", table, train, settings, api_batch=True)


@pytest.mark.e2e
@pytest.mark.slow
def test_batches_make_every_output_once(tmp_path):
    wf = make_run(tmp_path, n_images=3)  # 9 targets
    res = run(wf, "--batch", "all_outputs=1/3", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert f"make it first with: snakemake {TABLE} --configfile run.yaml" in res.stderr
    assert not outputs(wf)

    make_table(wf)
    seen = []
    for i in (1, 2, 3):
        res = run(wf, "--batch", f"all_outputs={i}/3")
        assert "plan: 9 targets" in res.stderr
        seen.append(len(outputs(wf)))
    assert seen == [3, 6, 9]  # each batch made its own third
    rows = manifest_rows(wf)
    assert len(rows) == 9 and {r["status"] for r in rows} == {"success"}
    before = outputs(wf)
    res = run(wf)  # an ordinary run afterwards: nothing to do
    assert "0 to generate" in res.stderr and outputs(wf) == before


@pytest.mark.e2e
@pytest.mark.slow
def test_batch_over_another_rule_is_refused(tmp_path):
    wf = make_run(tmp_path, n_images=2)
    make_table(wf)
    res = run(wf, "--batch", "manifest=1/2", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--batch all_outputs=1/N" in res.stderr
    assert not outputs(wf)
