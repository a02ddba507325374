"""The MLflow UI on the tiny end-to-end study's store, as a user sees it in a browser.

Starts ``mlflow ui`` bound to 127.0.0.1 on a free port (own process group, stopped by it), opens
the experiment's runs table (``#/experiments/<id>/runs``: MLflow 3.17 opens an experiment on its
GenAI overview otherwise) in headless Chromium, expands the sweep's parent run and checks that
the table shows the parent, every child run and the prepared data in the Dataset column.
Chromium comes from the system packages (``apt-get install -y chromium``, see README); without
it the test is skipped with that reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from headless import Browser, find_chromium
from helpers import ProcessGroup, base_env, free_port, wait_http

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_ui(study: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("mlflow-ui") / "mlflow-ui.log"
    port = free_port()
    ui = ProcessGroup(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{study / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        base_env(),
        log,
        cwd=study,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, ui)
        yield f"http://127.0.0.1:{port}"
    finally:
        ui.stop()


def test_runs_table_shows_the_parent_its_children_and_the_dataset(
    study: Path, mlflow_ui: str, tmp_path: Path
) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no headless Chromium on PATH (install it with `apt-get install -y chromium`)")
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    exp = c.get_experiment_by_name("tiny").experiment_id
    runs = c.search_runs([exp], max_results=1000)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags)
    digest = parent.inputs.dataset_inputs[0].dataset.digest
    browser = Browser(binary)
    try:
        browser.goto(f"{mlflow_ui}/#/experiments/{exp}/runs")
        name = json.dumps(parent.info.run_name)
        browser.wait_for(f"document.body && document.body.innerText.includes({name})", 120)
        # the parent's row is collapsed: click its expander (the run-name cell's icon button)
        row = json.dumps(
            f'[row-id="{parent.info.run_id}"] button[data-component-id*="runnamecellrenderer"]'
        )
        assert browser.js(
            f"(() => {{ const b = document.querySelector({row});"
            " if (!b) return false; b.click(); return true; })()"
        ), "no expander"
        last = json.dumps(children[-1])
        browser.wait_for(f"document.body.innerText.includes({last})", 60)
        text = browser.text()
        browser.screenshot(tmp_path / "runs.png")
    finally:
        browser.close()
    assert parent.info.run_name in text
    missing = [n for n in children if n not in text]
    assert not missing, f"child runs not in the table: {missing}\n{text[:3000]}"
    assert "Dataset" in text and f"prepared ({digest})" in text, text[:3000]
    assert text.count(f"prepared ({digest})") >= len(children) + 1  # parent and every child
