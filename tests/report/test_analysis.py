"""``report.analysis``: the per-prior numbers: contraction (γ̂ > 1) and DEQ convergence."""

from __future__ import annotations

import pytest
from builders import CFG, family_tables, md_section, table_cells

from pipeline.report import write_report


def test_gamma_above_one_is_not_reported_as_expected(family_report):
    _, metrics, md = family_report
    summary = md_section(md, "Summary")
    m = metrics["priors"]["pnp_deblur"]
    assert m["contractive"] is False and m["n_gamma_hat_above_1"] == 4
    assert m["rjfb_k5_t5_within_tolerance"] is True  # -0.085 dB: inside 0.1 dB, by chance
    assert m["rjfb_k5_t5_expected_within_tolerance"] is False
    assert metrics["noncontractive_priors"] == ["pnp_deblur"]
    expected = next(ln for ln in summary.splitlines() if ln.startswith("- As expected, every"))
    assert "for prior(s) l1, pnp, drunet_fb —" in expected and "pnp_deblur" not in expected
    line = next(ln for ln in summary.splitlines() if "Not contractive" in ln)
    assert "**Not contractive** for prior pnp_deblur" in line
    assert "γ̂ > 1 in 4 of 4 trials (γ̂ 1.100–1.280, largest in pnp_deblur-rjfb-K1-T0-s0)" in line
    assert "**not expected**" in line
    assert "measured anyway: rJFB K5 T5: equivalent, ΔPSNR -0.085 dB" in line
    cells = table_cells(md, "pnp_deblur-rjfb-K5-T5-s0")
    assert "**1.190**" in cells
    assert "0.950" in table_cells(md, "pnp-rjfb-K5-T5-s0")  # not bold


def test_deq_convergence_per_prior(family_report):
    _, metrics, md = family_report
    summary = md_section(md, "Summary")
    per = metrics["priors"]
    assert [per[p]["deq_converged"] for p in ("l1", "pnp", "drunet_fb")] == [True] * 3
    assert "DEQ converged for prior(s) l1, pnp, drunet_fb" in summary
    bad = per["pnp_deblur"]
    assert bad["deq_converged"] is False and bad["deq_trial"] == "pnp_deblur-deq-s0"
    assert bad["deq_epochs_above_tol"] == 2  # from the history: 6.4e-3, 3.2e-3 (and 0)
    line = next(ln for ln in summary.splitlines() if "DEQ did not converge" in ln)
    assert "prior pnp_deblur (`pnp_deblur-deq-s0`)" in line
    assert "relative residuals up to 3.2e-03 ≥ tol 0.0001 (stopped by max_iter 300)" in line
    assert "γ̂ = 1.210 > 1" in line
    assert metrics["deq_not_converged_priors"] == ["pnp_deblur"]
    results = md_section(md, "Results per prior")
    assert "DEQ convergence (`pnp-deq-s0`): **converged**" in results
    assert "DEQ convergence (`pnp_deblur-deq-s0`): **did not converge**" in results


def test_deq_convergence_judges_the_implicit_backward_solve(family_report, tmp_path):
    _, metrics, md = family_report
    pnp = metrics["priors"]["pnp"]
    assert pnp["deq_train_backward_residual"] == pytest.approx(2e-5)
    assert pnp["deq_epochs_backward_above_tol"] == 0
    assert "implicit backward solves at ≤ 2.0e-05 < backward_tol 0.0001" in pnp["deq_convergence"]
    summary = md_section(md, "Summary")
    assert "every implicit backward solve below sweep.deq.backward_tol" in summary

    # drunet_fb's forward and test solves converge, its backward solve stops at max_iter
    trials, history = family_tables()
    bad = (trials["prior"] == "drunet_fb") & (trials["estimator"] == "deq")
    trials.loc[bad, "train_backward_residual"] = 3e-3
    hbad = history["name"] == "drunet_fb-deq-s0"
    history.loc[hbad, "train_backward_residual"] = [6e-3, 3e-3, 3e-3]
    m = write_report(trials, history, tmp_path / "bad", CFG)
    d = m["priors"]["drunet_fb"]
    assert d["deq_converged"] is False
    assert d["deq_epochs_backward_above_tol"] == 3
    assert (
        "implicit backward solves ended at relative residuals up to 3.0e-03 ≥ backward_tol "
        "0.0001 (stopped by backward_max_iter 300)" in d["deq_convergence"]
    )
    assert "forward" not in d["deq_convergence"]  # the forward solves did converge
    assert set(m["deq_not_converged_priors"]) == {"pnp_deblur", "drunet_fb"}
    line = next(
        ln
        for ln in md_section((tmp_path / "bad" / "ablation.md").read_text(), "Summary").splitlines()
        if "DEQ did not converge** for prior drunet_fb" in ln
    )
    assert "backward_tol 0.0001" in line

    # a table from before the backward residual was recorded: judged on the rest, and said so
    old = trials.drop(columns=["train_backward_residual", "deq_backward_tol"])
    m = write_report(old, history.drop(columns=["train_backward_residual"]), tmp_path / "old", CFG)
    assert m["priors"]["drunet_fb"]["deq_converged"] is True
    assert m["priors"]["drunet_fb"]["deq_train_backward_residual"] is None
    summary = md_section((tmp_path / "old" / "ablation.md").read_text(), "Summary")
    assert "(no implicit backward residual recorded)" in summary
