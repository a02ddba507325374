"""``report.plot_histograms``: the PSNR histograms' groups."""

from __future__ import annotations

from builders import N_IMAGES, PNG_MAGIC, SEEDS, family_tables, normalise, seeded_tables


def test_histograms_show_one_layer_no_restart_restart_and_deq(tables, family_report):
    from pipeline.report.plots import histogram_groups

    trials, _ = tables
    t = normalise(trials)
    # the wavelet grid has K1, K5, K10 x T0, T5: the paper's K=1/T=0, K=5/T=0, K=5/T=5 are used
    labels = [g[0] for g in histogram_groups(t[t["prior"] == "l1"])]
    assert labels == [
        "one layer (K=1, T=0)",
        "no restart (K=5, T=0)",
        "restart (K=5, T=5)",
        "DEQ",
    ]
    fam = normalise(family_tables()[0])
    for prior in ("pnp", "drunet_fb"):
        groups = histogram_groups(fam[fam["prior"] == prior])
        assert [g[0] for g in groups][:3] == labels[:3]
        assert all(len(g[2]) == 1 for g in groups)
    out, _, _ = family_report
    assert (out / "plots" / "psnr_histograms.png").read_bytes()[:8] == PNG_MAGIC


def test_histograms_show_one_model_at_several_depths(seeded_report):
    from pipeline.report.plots import depth_data, depth_model

    out, _, _, _ = seeded_report
    t = normalise(seeded_tables()[0])
    g = depth_model(t)
    assert set(g["name"]) == {f"pnp_blur-rjfb-K5-T5-s{s}" for s in SEEDS}
    data = depth_data(g)
    assert [d[0] for d in data] == ["1 step", "K steps", "(T+1)·K steps", "equilibrium"]
    assert all(len(d[3]) == 3 * N_IMAGES for d in data)
    assert (out / "plots" / "psnr_histograms.png").read_bytes()[:8] == PNG_MAGIC
