"""``report.families``: prior families (wavelet, frozen PnP, a trained denoiser) in the report."""

from __future__ import annotations

from builders import CFG, FAMILY_PRIORS, FROZEN, TRAINED, family_study, family_tables, md_section

from pipeline.report import write_report


def test_prior_family_tells_frozen_pnp_from_a_trained_denoiser():
    from pipeline.report import prior_family

    study = family_study()
    fams = {p: prior_family(study.priors[p]) for p in FAMILY_PRIORS}
    assert [fams[p].key for p in FAMILY_PRIORS] == [
        "wavelet",
        "pnp_frozen",
        "pnp_frozen",
        "pnp_trained",
    ]
    assert fams["pnp"].label == FROZEN
    assert fams["drunet_fb"].label == TRAINED
    assert fams["drunet_fb"].name == "DRUNet inside FB, trained"
    layer = prior_family({"type": "pnp", "per_layer_sigma": True, "learn_relaxation": False})
    assert layer.label == "PnP, frozen denoiser: learn tau, sigma (one per layer)"
    assert prior_family(study.priors["l1"].model_dump()).key == "wavelet"


def test_report_labels_each_family(family_report):
    _, metrics, md = family_report
    summary = md_section(md, "Summary")
    assert f"*{FROZEN}*: pnp, pnp_deblur" in summary
    assert f"*{TRAINED}*: drunet_fb" in summary
    results = md_section(md, "Results per prior")
    assert f"### Prior `pnp` — {FROZEN}" in results
    assert f"### Prior `drunet_fb` — {TRAINED}" in results
    # wavelet first, then frozen PnP, then the trained denoiser
    order = [results.index(f"### Prior `{p}`") for p in ("l1", "pnp", "pnp_deblur", "drunet_fb")]
    assert order == sorted(order)
    assert metrics["families"]["pnp_frozen"]["priors"] == ["pnp", "pnp_deblur"]
    assert metrics["families"]["pnp_trained"]["name"] == "DRUNet inside FB, trained"
    assert metrics["priors"]["drunet_fb"]["family_label"] == TRAINED


def test_families_come_from_the_priors_config_when_the_table_lacks_them(tmp_path):
    trials, history = family_tables()
    old = trials.drop(columns=["prior_family", "prior_label"])
    metrics = write_report(old, history, tmp_path, CFG, priors=family_study().priors)
    assert metrics["priors"]["pnp"]["family_label"] == FROZEN
    assert metrics["priors"]["drunet_fb"]["family"] == "pnp_trained"
    bare = write_report(old, history, tmp_path / "bare", CFG)  # only prior_type: "PnP"
    assert bare["priors"]["drunet_fb"]["family"] == "pnp"
