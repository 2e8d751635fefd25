"""The review page's server: what it serves, to whom, and how decisions reach the workspace."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feederd.errors import SyncError
from feederd.sync import review, webviews
from feederd.sync.samples import SampleIndex
from feederd.sync.web import ReviewApp, start
from feederd.sync.workspace import Workspace
from sync.helpers import pulled_samples


def make_workspace(root: Path, visits: int = 4, per_visit: int = 3) -> Workspace:
    """A workspace with base labels and pulled samples waiting for review."""
    workspace = Workspace(root, "feeder").create()
    workspace.update_state(init={"labels": ["jay", "other", "robin"],
                                 "negative_labels": ["other"]})
    pulled_samples(workspace.dir, visits, per_visit)
    return workspace


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ReviewApp, Workspace]]:
    workspace = make_workspace(tmp_path)
    app, server = start(workspace)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield app, workspace
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def call(app: ReviewApp, path: str, body: Any = None, *, host: str | None = None,
         content_type: str = "application/json") -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{app.port}"}
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    with contextlib.closing(connection):
        connection.request("POST" if body is not None else "GET", path, data, headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())


def api(app: ReviewApp, path: str, body: Any = None) -> tuple[int, Any]:
    status, data, _ = call(app, f"/{app.token}/{path}", body)
    return status, json.loads(data)


def first_pending(workspace: Workspace, pseudo: bool | None = None) -> dict[str, Any]:
    return next(s for s in review.pending(workspace)
                if pseudo is None or bool(review.pseudo_label(s)) == pseudo)


class TestSafety:
    def test_the_server_listens_on_the_loopback_address_only(self, served: Any) -> None:
        app, _ = served
        assert app.url.startswith(f"http://127.0.0.1:{app.port}/{app.token}/")
        assert len(app.token) >= 30

    def test_nothing_is_served_without_the_token(self, served: Any) -> None:
        app, _ = served
        for path in ("/", "/api/samples", f"/{app.token[:-1]}x/api/samples",
                     f"/{app.token[:-1]}x/"):
            assert call(app, path)[0] == 404, path
        assert call(app, f"/{app.token}/")[0] == 200

    def test_a_request_naming_another_host_is_refused(self, served: Any) -> None:
        app, _ = served
        assert call(app, f"/{app.token}/", host="evil.example:80")[0] == 404
        assert call(app, f"/{app.token}/", host=f"localhost:{app.port}")[0] == 200

    def test_images_are_found_by_sample_id_and_hash_only(self, served: Any) -> None:
        app, workspace = served
        sample = first_pending(workspace)
        status, data, headers = call(app, f"/{app.token}/img/{sample['id']}/{sample['sha256']}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert data == (workspace.dir / sample["file"]).read_bytes()
        for path in (f"img/{sample['id']}/{'0' * 64}", "img/..%2f..%2fstate.json/x",
                     "img/../state.json", "static/..%2fweb.py", "static/index.html"):
            assert call(app, f"/{app.token}/{path}")[0] == 404, path

    def test_a_sample_file_outside_the_samples_folder_is_not_served(self, served: Any
                                                                    ) -> None:
        app, workspace = served
        sample = first_pending(workspace)
        with SampleIndex(workspace.dir / "samples.db") as index:
            index._db.execute("UPDATE samples SET file = 'state.json' WHERE id = ?",
                              (sample["id"],))
        assert call(app, f"/{app.token}/img/{sample['id']}/{sample['sha256']}")[0] == 404

    def test_pages_forbid_outside_scripts_and_framing(self, served: Any) -> None:
        app, _ = served
        headers = call(app, f"/{app.token}/")[2]
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"

    def test_a_decision_must_come_as_json(self, served: Any) -> None:
        app, workspace = served
        sample = first_pending(workspace)
        status, _, _ = call(app, f"/{app.token}/api/decide", f"id={sample['id']}&action=exclude",
                            content_type="application/x-www-form-urlencoded")
        assert status == 400
        assert len(review.pending(workspace)) == 12


class TestDecisions:
    def test_a_decision_is_in_the_workspace_when_the_answer_arrives(self, served: Any
                                                                     ) -> None:
        app, workspace = served
        sample = first_pending(workspace)
        status, body = api(app, "api/decide", {"decisions": [
            {"id": sample["id"], "sha256": sample["sha256"], "action": "label", "label": "jay"}]})
        assert status == 200 and body["counts"] == {"pending": 11, "decided": 1}
        with SampleIndex(workspace.dir / "samples.db") as index:
            row = index.get(sample["id"], sample["sha256"])
        assert row and (row["review_source"], row["review_label"]) == ("owner", "jay")

    def test_a_label_nobody_knows_needs_the_new_label_step(self, served: Any) -> None:
        app, workspace = served
        sample = first_pending(workspace)
        decision = {"id": sample["id"], "action": "label", "label": "jya"}
        status, body = api(app, "api/decide", {"decisions": [decision]})
        assert status == 400 and "did you mean 'jay'" in body["error"]
        assert len(review.pending(workspace)) == 12
        status, body = api(app, "api/decide", {"decisions": [decision], "new_label": "jya"})
        assert status == 200 and body["new_labels"] == ["jya"]
        assert "jya" in review.known_labels(workspace)

    def test_accepting_needs_a_pseudo_label(self, served: Any) -> None:
        app, workspace = served
        plain, pseudo = first_pending(workspace, False), first_pending(workspace, True)
        status, body = api(app, "api/decide", {"decisions": [
            {"id": pseudo["id"], "action": "accept"}, {"id": plain["id"], "action": "accept"}]})
        assert status == 400 and "no pseudo-label" in body["error"]
        assert len(review.pending(workspace)) == 12  # nothing of the batch was written

    def test_undo_puts_the_sample_back_in_the_queue(self, served: Any) -> None:
        app, workspace = served
        sample = first_pending(workspace, True)
        api(app, "api/decide", {"decisions": [{"id": sample["id"], "action": "accept"}]})
        assert len(review.pending(workspace)) == 11
        status, body = api(app, "api/decide", {"decisions": [
            {"id": sample["id"], "action": "restore", "source": None, "label": None}]})
        assert status == 200 and body["saved"][0]["review"] is None
        assert len(review.pending(workspace)) == 12

    def test_a_busy_workspace_refuses_the_decision_with_a_reason(self, served: Any) -> None:
        app, workspace = served
        sample = first_pending(workspace)
        with workspace.lock():
            status, body = api(app, "api/decide", {"decisions": [
                {"id": sample["id"], "action": "exclude"}]})
        assert status == 400 and "another feeder-sync command" in body["error"]

    def test_one_history_line_records_the_whole_page_session(self, served: Any) -> None:
        app, workspace = served
        for sample in review.pending(workspace)[:3]:
            api(app, "api/decide", {"decisions": [{"id": sample["id"], "action": "exclude"}]})
        app.close()
        history = [e for e in workspace.load_state()["history"] if e["event"] == "review"]
        assert len(history) == 1 and history[0]["excluded"] == 3 and history[0]["via"] == "web"


class TestViews:
    def test_visits_come_most_doubtful_first_with_their_samples_in_time_order(
            self, tmp_path: Path) -> None:
        view = webviews.samples_view(make_workspace(tmp_path, visits=6))
        doubts = [v["doubt"] for v in view["visits"]]
        assert doubts == sorted(doubts, reverse=True) and len(doubts) == 6
        for visit in view["visits"]:
            times = [s["time"] for s in visit["samples"]]
            assert times == sorted(times)
            assert visit["doubt"] == max(round(1 - s["margin"], 4) for s in visit["samples"])

    def test_each_sample_shows_the_models_top_three_and_no_file_path(self, tmp_path: Path
                                                                     ) -> None:
        view = webviews.samples_view(make_workspace(tmp_path))
        sample = view["visits"][0]["samples"][0]
        probs = [p for _, p in sample["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert "file" not in sample and view["counts"] == {"pending": 12, "decided": 0}

    def test_without_an_evaluation_the_report_view_says_what_to_run(self, tmp_path: Path
                                                                    ) -> None:
        view = webviews.report_view(make_workspace(tmp_path))
        assert view == {"found": False,
                        "message": "no evaluation yet: run 'feeder-sync evaluate'"}

    def test_an_unknown_sample_has_no_image(self, tmp_path: Path) -> None:
        with pytest.raises(SyncError, match="no pulled sample 999"):
            webviews.image_path(make_workspace(tmp_path), "999", "0" * 64)


class TestCommand:
    def test_review_web_prints_its_link_and_stops_cleanly_on_sigterm(self, tmp_path: Path
                                                                     ) -> None:
        from sync.browser import ReviewServer
        from sync.helpers import sync_config

        workspace = make_workspace(tmp_path / "workspace")
        server = ReviewServer(sync_config(tmp_path))
        try:
            port = int(server.url.split(":")[2].split("/")[0])
            token = server.url.rstrip("/").rsplit("/", 1)[1]
            app = ReviewApp(workspace, token=token, port=port)  # only to address the server
            sample = first_pending(workspace)
            assert api(app, "api/decide", {"decisions": [
                {"id": sample["id"], "action": "exclude"}]})[0] == 200
        finally:
            assert server.stop() == 0
        history = [e for e in workspace.load_state()["history"] if e["event"] == "review"]
        assert history[-1]["excluded"] == 1 and history[-1]["via"] == "web"
