"""``report.markdown``: the trials tables, the failures and the headline verdict table."""

from __future__ import annotations

from builders import (
    DIVERGED,
    DIVERGED_REASON,
    FAILED,
    FAILED_REASON,
    config_row,
    md_section,
    read_configs,
)

from pipeline.report import PLOT_FILES


def test_markdown_lists_every_trial_and_every_failure(tables, report):
    trials, _ = tables
    out, _ = report
    md = (out / "ablation.md").read_text()
    per_prior = md_section(md, "Results per prior")
    for name in trials["name"]:
        assert f"`{name}`" in per_prior
    failed = md_section(md, "Failed / diverged")
    assert DIVERGED in failed and DIVERGED_REASON in failed
    assert FAILED in failed and FAILED_REASON.replace("|", "\\|") in failed
    for fname in PLOT_FILES:
        assert f"](plots/{fname})" in md
    assert not list(out.glob(".report.tmp-*"))


def test_headline_table_gives_a_verdict_per_prior_and_configuration(report):
    out, _ = report
    md = (out / "ablation.md").read_text()
    head = md_section(md, "Verdicts against DEQ")
    c = read_configs(out)
    assert "| configuration | `l1` | `pnp` |" in head
    assert "| DEQ | reference | reference |" in head
    row = next(ln for ln in head.splitlines() if ln.startswith("| rJFB K10 T5 |"))
    l1, pnp = (config_row(c, p, "rJFB K10 T5") for p in ("l1", "pnp"))
    assert f"equivalent {l1['delta_psnr_mean']:+.3f} [" in row
    assert f"**worse** {pnp['delta_psnr_mean']:+.3f} [" in row
    row = next(ln for ln in head.splitlines() if ln.startswith("| rJFB K10 T0 |"))
    assert "inconclusive: no finished trial" in row
    assert next(ln for ln in head.splitlines() if ln.startswith("| JFB |")).endswith("| — |")
