"""``report.summary``: the verdicts the summary states, with their intervals and caveats."""

from __future__ import annotations

import re

import pytest
from builders import CFG, N_IMAGES, config_row, md_section, read_configs, seeded_tables, table_cells

from pipeline.report import write_report
from pipeline.study.config import ReportConfig


def test_summary_states_verdicts_with_intervals(report):
    from pipeline.report.configs import describe

    out, metrics = report
    md = (out / "ablation.md").read_text()
    summary = md_section(md, "Summary")
    c = read_configs(out)
    header = [c.strip() for c in md.split("| trial |", 1)[1].splitlines()[0].strip("|").split("|")]
    col = ["trial", *header].index("ΔPSNR eq. (dB)")

    # the trials table keeps each trial's own difference
    assert table_cells(md, "l1-rjfb-K5-T5-s0")[col] == "-0.040"
    # l1: the deep rJFB configurations are equivalent (intervals inside ±0.1 dB)
    for label in ("rJFB K5 T5", "rJFB K10 T5"):
        r = config_row(c, "l1", label)
        assert r["verdict"] == "equivalent"
        assert -0.1 <= r["delta_psnr_ci_low"] <= r["delta_psnr_mean"] <= r["delta_psnr_ci_high"]
        assert r["delta_psnr_ci_high"] <= 0.1
        assert describe(r) in summary
    line = next(ln for ln in summary.splitlines() if ln.startswith("- As expected, every rJFB"))
    assert "for prior(s) l1 —" in line and "pnp" not in line.split("—")[0]
    assert metrics["priors"]["l1"]["rjfb_k5_t5_verdict"] == "equivalent"
    assert metrics["priors"]["l1"]["rjfb_k5_t5_within_tolerance"] is True

    # pnp: K10-T5 is 0.2 dB below DEQ, its interval excludes the tolerance: worse
    r = config_row(c, "pnp", "rJFB K10 T5")
    assert r["verdict"] == "worse" and r["delta_psnr_ci_high"] < -0.1
    assert "**Expectation not met** for prior pnp" in summary
    assert describe(r) in summary and "rJFB K10 T5: worse, ΔPSNR -0.2" in summary
    assert metrics["priors"]["pnp"]["rjfb_k5_t5_verdicts"]["rJFB K10 T5"] == "worse"
    assert metrics["priors"]["pnp"]["rjfb_k5_t5_within_tolerance"] is False
    assert metrics["all_priors_rjfb_k5_t5_within_tolerance"] is False

    # T=0: every finished no-restart network is worse; the diverged one has no verdict
    line = next(ln for ln in summary.splitlines() if "truncated networks" in ln)
    assert "(3 worse, 1 inconclusive of 4 configuration(s))" in line
    assert "rJFB K10 T0: inconclusive, ΔPSNR —, 0 seeds" in line
    assert (
        "1 of 1 trials did not finish (1 diverged)" in config_row(c, "pnp", "rJFB K10 T0")["note"]
    )

    # time to quality: the fastest configuration's mean over seeds (one seed: no interval)
    best = metrics["priors"]["l1"]["best_rjfb_time_to_quality_ratio"]
    label = metrics["priors"]["l1"]["best_rjfb_time_to_quality_config"]
    rj = c[(c["prior"] == "l1") & (c["estimator"] == "rjfb")]
    assert best == pytest.approx(rj["time_to_quality_ratio_mean"].min())
    assert f"({label}) reaches DEQ's final validation PSNR − 0.05 dB in {best:.2f}×" in summary
    assert "a single seed: no interval, inconclusive" in summary
    assert "2 of 17 trials did not finish (1 diverged, 1 failed)" in summary


def test_three_seeds_worse_equivalent_and_inconclusive(seeded_report):
    _, metrics, md, c = seeded_report
    worse, equal, noisy = (
        config_row(c, "pnp_blur", lab) for lab in ("rJFB K1 T0", "rJFB K5 T5", "rJFB K5 T0")
    )
    assert (worse["verdict"], equal["verdict"], noisy["verdict"]) == (
        "worse",
        "equivalent",
        "inconclusive",
    )
    for r in (worse, equal, noisy):  # pairs over (image, seed)
        assert (r["n_seeds"], r["n_pairs"]) == (3, 3 * N_IMAGES)
    assert worse["delta_psnr_mean"] == pytest.approx(-0.8, abs=0.02)
    assert worse["delta_psnr_ci_high"] < -0.1
    assert equal[["delta_psnr_mean", "delta_psnr_ci_low", "delta_psnr_ci_high"]].tolist() == [
        0.0,
        0.0,
        0.0,
    ]
    # the noisy one's interval is wider than the tolerance band, on both sides of zero
    assert noisy["delta_psnr_ci_low"] < -0.1 and noisy["delta_psnr_ci_high"] > 0
    # at depth: per image as well, (T+1)K PSNRs 0.3 dB lower at T=0
    assert worse["n_pairs_at_depth"] == 3 * N_IMAGES and worse["verdict_at_depth"] == "worse"
    assert equal["verdict_at_depth"] == "equivalent"
    assert config_row(c, "pnp_blur", "DEQ")["verdict"] == "reference"
    m = metrics["priors"]["pnp_blur"]
    assert m["rjfb_k1_t0_verdict"] == "worse"
    assert m["rjfb_k5_t5_verdict"] == "equivalent" and m["n_seeds"] == 3
    assert m["verdict_counts"] == {
        "equivalent": 1,
        "better": 0,
        "worse": 1,
        "small difference": 0,
        "inconclusive": 1,
    }
    summary = md_section(md, "Summary")
    assert "rJFB K5 T5: equivalent, ΔPSNR +0.000 dB [+0.000, +0.000], 3 seeds" in summary
    line = next(ln for ln in summary.splitlines() if "truncated networks" in ln)
    assert "rJFB K5 T0: inconclusive, ΔPSNR " in line and "3 seeds" in line
    head = md_section(md, "Verdicts against DEQ")
    assert re.search(
        r"\| rJFB K1 T0 \| \*\*worse\*\* -0\.\d{3} \[-0\.\d{3}, -0\.\d{3}\] \(3\) \|", head
    )


def test_time_to_quality_over_seeds_has_an_interval(seeded_report):
    _, metrics, md, c = seeded_report
    r = config_row(c, "pnp_blur", "rJFB K5 T5")
    assert r["n_seeds_time_to_quality"] == 3
    assert r["time_to_quality_ratio_mean"] == pytest.approx(0.5)
    assert (
        0.4 <= r["time_to_quality_ratio_ci_low"] < 0.5 < r["time_to_quality_ratio_ci_high"] <= 0.6
    )
    m = metrics["priors"]["pnp_blur"]
    assert m["best_rjfb_time_to_quality_config"] == "rJFB K5 T5"
    assert "faster than DEQ: the whole interval is below 1" in md_section(md, "Summary")


def test_a_reliable_deq_baseline_is_said_to_be(seeded_report):
    _, metrics, md, c = seeded_report
    m = metrics["priors"]["pnp_blur"]
    assert m["deq_reliable"] is True and m["deq_backward_unconverged_frac_max"] == 0.05
    assert c["deq_reliable"].all()
    assert "DEQ baseline reliable for prior(s) pnp_blur" in md_section(md, "Summary")
    assert metrics["deq_unreliable_priors"] == []
    assert "†" not in md_section(md, "Verdicts against DEQ").split("\n\n", 2)[-1]


@pytest.mark.parametrize("why", ["backward_unconverged_frac", "probe_ref_backward_residual"])
def test_an_unreliable_deq_baseline_is_flagged_in_every_verdict(tmp_path, why):
    if why == "backward_unconverged_frac":
        tables = seeded_tables(frac=(0.0, 0.4, 0.05))  # seed 1: 40% of backward solves missed
    else:
        tables = seeded_tables(probe=3e-3)  # the probe reference ended above backward_tol
    metrics = write_report(*tables, tmp_path, CFG)
    m = metrics["priors"]["pnp_blur"]
    assert m["deq_reliable"] is False and metrics["deq_unreliable_priors"] == ["pnp_blur"]
    c = read_configs(tmp_path)
    assert not c["deq_reliable"].any()
    compared = c[c["verdict"] != "reference"]
    assert compared["note"].str.contains("against an unreliable DEQ baseline").all()
    md = (tmp_path / "ablation.md").read_text()
    summary = md_section(md, "Summary")
    line = next(ln for ln in summary.splitlines() if "**DEQ baseline unreliable**" in ln)
    if why == "backward_unconverged_frac":
        assert m["deq_unreliable_seeds"] == ["1"]
        assert "seed 1: 40% of its training steps' implicit backward solves missed" in line
        assert "report.deq_unreliable_frac 0.1" in line
    else:
        assert m["deq_unreliable_seeds"] == ["0", "1", "2"]
        assert "backward solve at 3.0e-03 > backward_tol 0.0001" in line
    assert "equivalent, ΔPSNR +0.000 dB [+0.000, +0.000], 3 seeds (against an unreliable" in summary
    head = md_section(md, "Verdicts against DEQ")
    assert "**worse** †" in head and "equivalent †" in head
    assert "DEQ baseline **unreliable**" in md_section(md, "Results per prior")
    # the threshold is the params' key: at 0.5, 40% is fine
    if why == "backward_unconverged_frac":
        lax = write_report(*tables, tmp_path / "lax", ReportConfig(deq_unreliable_frac=0.5))
        assert lax["priors"]["pnp_blur"]["deq_reliable"] is True


def test_configurations_without_an_equilibrium_are_named(tmp_path, seeded_report):
    # rJFB K1 T0's test solves stopped above eval_tol on seeds 0 and 2 (one exactly at it: a
    # solve converges below its tolerance); every other solve converged
    trials, history = seeded_tables()
    trials["eval_tol"] = 1e-4
    trials["test_eq_residual"] = 5e-5
    k1 = trials["name"].str.contains("-K1-T0-")
    trials.loc[k1 & (trials["seed"] == 0), "test_eq_residual"] = 3e-2
    trials.loc[k1 & (trials["seed"] == 2), "test_eq_residual"] = 1e-4
    write_report(trials, history, tmp_path, CFG)
    c = read_configs(tmp_path)
    r = config_row(c, "pnp_blur", "rJFB K1 T0")
    assert r["n_seeds_no_equilibrium"] == 2 and r["test_eq_residual_max"] == pytest.approx(3e-2)
    others = c[c["label"] != "rJFB K1 T0"]
    assert (others["n_seeds_no_equilibrium"] == 0).all()
    assert others["test_eq_residual_max"].tolist() == pytest.approx([5e-5] * len(others))
    summary = md_section((tmp_path / "ablation.md").read_text(), "Summary")
    line = next(ln for ln in summary.splitlines() if "**No equilibrium reached**" in ln)
    assert line.endswith(": pnp_blur rJFB K1 T0 (2/3 seeds, residual up to 3.0e-02).")
    # a table without the residuals (an older sweep) claims nothing
    _, _, md, old = seeded_report
    assert (old["n_seeds_no_equilibrium"] == 0).all()
    assert "No equilibrium" not in md
