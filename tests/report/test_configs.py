"""``report.configs``: configs.parquet, one row per prior and configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import (
    CFG,
    assert_plot_files,
    config_row,
    md_section,
    read_configs,
    seeded_tables,
)

from pipeline.report import write_report
from pipeline.study.config import ReportConfig


def test_configs_parquet_has_one_row_per_prior_and_configuration(tables, report):
    from pipeline.report.configs import CONFIG_COLUMNS

    trials, _ = tables
    out, _ = report
    c = read_configs(out)
    assert list(c.columns) == list(CONFIG_COLUMNS)
    assert len(c) == len(trials)  # one seed: one trial per configuration
    assert set(c["verdict"]) <= {"equivalent", "worse", "better", "inconclusive", "reference"}
    assert list(c.loc[c["estimator"] == "deq", "verdict"]) == ["reference", "reference"]
    assert c.loc[c["estimator"] == "deq", "delta_psnr_mean"].isna().all()
    assert (c["n_seeds"] <= 1).all() and c["deq_reliable"].isna().all()
    assert c["tuned_lr"].isna().all()  # a grid sweep: no tuned rate
    # the one-seed intervals are over the 16 test images
    assert (c.loc[c["n_seeds"] == 1, "n_pairs"].isin([0, 16])).all()
    # at depth: no per-image PSNRs there, one difference per seed: no interval
    r = config_row(c, "l1", "rJFB K5 T5")
    assert r["n_pairs_at_depth"] == 1 and np.isnan(r["delta_psnr_at_depth_ci_low"])
    assert r["verdict_at_depth"] == "inconclusive"
    assert r["delta_psnr_at_depth_mean"] == pytest.approx(27.44 - 27.50)


def test_worst_parameter_group_per_configuration(seeded_report):
    _, metrics, md, c = seeded_report
    worse = config_row(c, "pnp_blur", "rJFB K1 T0")
    # τ has no direction (DEQ's gradient is zero there): never the worst group
    assert (worse["worst_group"], worse["worst_group_cos"]) == ("sigma", pytest.approx(-0.35))
    assert worse["worst_group_rel_err"] == pytest.approx(1.6)
    assert worse["grad_cos_min_group_mean"] == pytest.approx(-0.35)
    assert config_row(c, "pnp_blur", "DEQ")["worst_group"] == ""
    # a group name is untrusted text: only the characters the sweep writes reach ablation.md
    from pipeline.report.configs import worst_group

    hostile = pd.DataFrame({"grad_groups_json": ['{"<b>x|y</b>": {"cos": 0.1, "rel_err": 1}}']})
    assert worst_group(hostile) == ("_b_x_y__b_", 0.1, 1.0)
    w = metrics["priors"]["pnp_blur"]["rjfb_worst_group"]
    assert (w["config"], w["group"]) == ("rJFB K1 T0", "sigma")
    summary = md_section(md, "Summary")
    assert "worst gradient group against DEQ is sigma at rJFB K1 T0, mean cosine -0.350" in summary
    assert "smallest per-group gradient cosine -0.350 (sigma)" in summary
    assert "| rJFB K1 T0 | 3/3 |" in md and "sigma (-0.350, 1.60e+00)" in md


OLD_COLUMNS = [
    "test_psnr_per_image",
    "test_psnr_1_per_image",
    "test_psnr_k_per_image",
    "test_psnr_at_depth_per_image",
    "grad_groups_json",
    "grad_cos_min_group_vs_deq",
    "grad_sign_agree_vs_deq",
    "gamma_hat_k",
    "backward_unconverged_frac",
    "probe_ref_residual",
    "probe_ref_backward_residual",
]


def test_a_table_without_the_new_columns_still_gets_a_report(tmp_path):
    trials, history = seeded_tables()
    old = trials.drop(columns=[c for c in OLD_COLUMNS if c in trials.columns])
    metrics = write_report(old, history, tmp_path, CFG)
    assert_plot_files(tmp_path)
    c = read_configs(tmp_path)
    # one difference per seed: intervals over the 3 seeds, and the note says so
    worse = config_row(c, "pnp_blur", "rJFB K1 T0")
    assert (worse["n_pairs"], worse["verdict"]) == (3, "worse")
    assert "no per-image PSNRs: interval over seeds only" in worse["note"]
    assert c["grad_cos_min_group_mean"].isna().all() and (c["worst_group"] == "").all()
    assert c["deq_reliable"].isna().all()
    m = metrics["priors"]["pnp_blur"]
    assert m["deq_reliable"] is None and m["rjfb_worst_group"] is None
    md = (tmp_path / "ablation.md").read_text()
    summary = md_section(md, "Summary")
    assert "DEQ baseline reliability not judged for prior(s) pnp_blur" in summary
    assert "have no per-image PSNRs: their interval is over seeds only" in summary
    assert "worst gradient group" not in summary
    # a single seed of such a table: one number per configuration, no interval, no verdict
    one = old[old["seed"] == 0]
    write_report(one, history, tmp_path / "one", CFG)
    c1 = read_configs(tmp_path / "one")
    assert set(c1.loc[c1["verdict"] != "reference", "verdict"]) == {"inconclusive"}
    assert c1.loc[c1["verdict"] != "reference", "note"].str.contains("one pair").all()


def test_configs_say_which_rate_a_tuned_arm_used(tmp_path):
    """A tuned sweep records each trial's chosen rate (``tuned_lr``); configs.parquet carries
    it per configuration, so the comparison says at which rate each arm trained."""
    trials, history = seeded_tables()
    rates = {"deq": 0.05, "rjfb": 0.12}
    trials = trials.assign(tuned_lr=[rates[e] for e in trials["estimator"]])
    write_report(trials, history, tmp_path, CFG)
    c = read_configs(tmp_path)
    assert config_row(c, "pnp_blur", "DEQ")["tuned_lr"] == pytest.approx(0.05)
    assert config_row(c, "pnp_blur", "rJFB K5 T5")["tuned_lr"] == pytest.approx(0.12)


def test_deq_unreliable_frac_is_a_fraction():
    from pydantic import ValidationError

    assert ReportConfig().deq_unreliable_frac == 0.1
    assert ReportConfig.model_fields["deq_unreliable_frac"].description
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            ReportConfig(deq_unreliable_frac=bad)
