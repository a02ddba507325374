"""MLflow bookkeeping: reachability, and the run lifecycle that makes resume exact.

A sqlite store in a temporary folder stands in for the server (the cluster tests run a real
`mlflow server`); the HTTP checks use a throwaway local HTTP server.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sweep import tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, tracking.ensure_experiment(uri, "t")


def _status(uri: str, run_id: str) -> str:
    return tracking.client(uri).get_run(run_id).info.status


# --------------------------------------------------------------------------- reachability


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers like an MLflow server: /health "OK", its REST API JSON (``mlflow=False``: a web
    server that answers /health but is not MLflow)."""

    code = 200
    mlflow = True
    paths: tuple[str, ...] = ()

    def do_GET(self) -> None:
        type(self).paths = (*type(self).paths, self.path)  # what the check asked, in order
        api = self.path.startswith("/api/2.0/mlflow/")
        if api and self.mlflow:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "none"}')
            return
        self.send_response(self.code if not api else 404)
        self.end_headers()
        self.wfile.write(b"OK" if not api else b"<html>Not Found</html>")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def http_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_check_reachable_accepts_a_healthy_server(http_server) -> None:
    url, handler = http_server
    assert tracking.check_reachable(url) is None
    asked = handler.paths
    # /health first, then the MLflow REST API: a healthy MLflow server passes both
    assert asked[0] == "/health" and len(asked) >= 2, asked
    assert all(p.startswith("/api/2.0/mlflow/") for p in asked[1:]), asked
    assert tracking.check_reachable(url + "/") is None
    assert handler.paths[len(asked)] == "/health"  # the trailing slash is not doubled


def test_check_reachable_refuses_a_server_that_is_not_mlflow(http_server) -> None:
    url, handler = http_server
    handler.mlflow = False
    with pytest.raises(tracking.TrackingError, match="answers /health but is not an MLflow"):
        tracking.check_reachable(url)


@pytest.mark.parametrize("uri", ["http://[::1", "http://127.0.0.1:abc", "http://:5000"])
def test_check_reachable_refuses_a_malformed_url(uri: str) -> None:
    with pytest.raises(tracking.TrackingError, match="malformed URL"):
        tracking.check_reachable(uri)


def test_check_reachable_names_an_erroring_server(http_server) -> None:
    url, handler = http_server
    handler.code = 503
    with pytest.raises(tracking.TrackingError, match="answered HTTP 503"):
        tracking.check_reachable(url)


def test_check_reachable_fails_fast_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"cannot reach http://127.0.0.1:{port}"):
        tracking.check_reachable(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 5


def test_check_reachable_leaves_local_stores_alone(tmp_path: Path, monkeypatch) -> None:
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("a local store needs no network check")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert tracking.check_reachable(f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}") is None
    assert tracking.check_reachable(str(tmp_path / "mlruns")) is None
    assert list(tmp_path.iterdir()) == []  # nothing created either


# --------------------------------------------------------------------------- run lifecycle


def test_a_restored_sweep_reopens_its_parent_and_a_fresh_one_supersedes_it(store) -> None:
    uri, exp = store
    first = tracking.parent_run(uri, exp, "s1", "sweep-s1", {"a": 1}, tune_path="/r/s1")
    child = tracking.open_child(uri, exp, first, "k1", "t1", {"x": 1})
    assert _status(uri, first) == "RUNNING"
    # the driver dies; a restore of the same Tune experiment reopens the same parent
    again = tracking.parent_run(uri, exp, "s1", "sweep-s1", {"a": 1}, tune_path="/r/s1")
    assert again == first
    # a fresh start (Tune's storage gone) ends the unfinished attempt, children included
    fresh = tracking.parent_run(
        uri, exp, "s1", "sweep-s1", {"a": 1}, tune_path="/r/s1", resume=False
    )
    assert fresh != first
    assert _status(uri, first) == "KILLED" and _status(uri, child.run_id) == "KILLED"
    # another sweep's parent is never touched
    other = tracking.parent_run(uri, exp, "s2", "sweep-s2", {}, tune_path="/r/s2", resume=False)
    assert _status(uri, fresh) == "RUNNING" and other not in (first, fresh)


def test_a_trial_reopens_its_child_run_and_a_finished_one_keeps_its_result(store) -> None:
    uri, exp = store
    c = tracking.client(uri)
    parent = tracking.parent_run(uri, exp, "s3", "sweep-s3", {}, tune_path="/r/s3")
    run = tracking.open_child(uri, exp, parent, "k", "trial", {"lr": 0.1}, {"rjfb.node_id": "n1"})
    assert not run.reopened and not run.finished
    tracking.log_metrics(c, run.run_id, {"epoch": 1.0, "val_psnr": 20.0}, step=1)
    # killed: the next driver ends it KILLED before trials restart
    assert tracking.close_children(c, exp, parent, "KILLED", "driver interrupted") == 1
    assert _status(uri, run.run_id) == "KILLED"
    assert tracking.close_children(c, exp, parent) == 0
    # the restored trial gets the same run back, RUNNING, and knows which epochs it holds
    again = tracking.open_child(uri, exp, parent, "k", "trial", {"lr": 0.1}, {"rjfb.node_id": "n2"})
    assert again.run_id == run.run_id and again.reopened and not again.finished
    assert _status(uri, run.run_id) == "RUNNING"
    assert c.get_run(run.run_id).data.tags["rjfb.node_id"] == "n2"
    assert tracking.logged_steps(c, run.run_id, "epoch") == {1}
    assert tracking.load_result(c, run.run_id) is None
    result = {"final": 1, "test_psnr": 25.5, "status": "finished"}
    tracking.log_result(c, run.run_id, result)
    tracking.finish(c, run.run_id, "finished")
    # a finished run is handed back as it is, with the result it keeps
    done = tracking.open_child(uri, exp, parent, "k", "trial", {"lr": 0.1})
    assert done.run_id == run.run_id and done.finished
    assert _status(uri, run.run_id) == "FINISHED"
    assert tracking.load_result(c, run.run_id) == result
    assert [r.info.run_id for r in tracking.children(uri, exp, parent)] == [run.run_id]
    # other trials get their own runs
    assert tracking.open_child(uri, exp, parent, "k2", "trial2", {}).run_id != run.run_id
