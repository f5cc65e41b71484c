"""``push_dashboards`` against a stand-in for Grafana's HTTP API.

A STAND-IN, NOT GRAFANA: no Grafana server can be installed or run here, so this
test serves, on loopback, just the endpoints grafana-client calls for a push
(GET/POST /api/folders, POST /api/dashboards/db), records what arrives, and
answers the way Grafana's API documents. It proves what attnmon sends (titles,
uids, folder, overwrite, credentials) and how it reports failures; it cannot
prove that a real Grafana renders the dashboards (their queries are checked
against a real Prometheus in tests/integration).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor.tools.grafana import GrafanaPushError, push_dashboards

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"


class FakeGrafana(ThreadingHTTPServer):
    """Folders and dashboards in dicts; every request is logged as (method, path, auth, body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folders: list[dict[str, Any]] = []
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.fail_dashboards_with: tuple[int, dict[str, Any]] | None = None
        self.required_auth: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._admit(None):
            return
        if self.path.split("?")[0] == "/api/folders":
            self._reply(200, [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.server.folders])
        else:
            self._reply(404, {"message": "Not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
        if not self._admit(body):
            return
        fake = self.server
        if self.path == "/api/folders":
            if any(f["title"] == body["title"] for f in fake.folders):
                self._reply(409, {"message": "a folder with the same name already exists"})
                return
            folder = {"id": len(fake.folders) + 1, "uid": body.get("uid") or "generated", "title": body["title"]}
            fake.folders.append(folder)
            self._reply(200, folder)
        elif self.path == "/api/dashboards/db":
            if fake.fail_dashboards_with:
                self._reply(*fake.fail_dashboards_with)
                return
            dashboard = body["dashboard"]
            if body.get("folderUid") not in {f["uid"] for f in fake.folders}:
                self._reply(400, {"message": "folder not found"})
                return
            if dashboard["uid"] in fake.dashboards and not body.get("overwrite"):
                self._reply(412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"})
                return
            version = fake.dashboards.get(dashboard["uid"], {}).get("version", 0) + 1
            fake.dashboards[dashboard["uid"]] = {**body, "version": version}
            self._reply(200, {"id": len(fake.dashboards), "uid": dashboard["uid"], "status": "success",
                              "version": version, "url": f"/d/{dashboard['uid']}/x", "slug": "x"})
        else:
            self._reply(404, {"message": "Not found"})

    def _admit(self, body: Any) -> bool:
        auth = self.headers.get("Authorization")
        self.server.requests.append((self.command, self.path, auth, body))
        if self.server.required_auth is not None and auth != self.server.required_auth:
            self._reply(401, {"message": "invalid API key"})
            return False
        return True

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def shipped() -> dict[str, str]:
    """uid -> title of every dashboard file in the repository."""
    return {d["uid"]: d["title"] for d in (json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json")))}


def test_push_creates_the_folder_and_upserts_every_dashboard(grafana: FakeGrafana) -> None:
    grafana.required_auth = "Bearer glsa_test_token"
    uids = push_dashboards(grafana.url, "glsa_test_token", DASHBOARDS)

    assert set(uids) == set(shipped()) and len(uids) == 3
    assert [f["title"] for f in grafana.folders] == ["attnmon"]
    folder_uid = grafana.folders[0]["uid"]
    for uid, title in shipped().items():
        pushed = grafana.dashboards[uid]
        assert pushed["overwrite"] is True
        assert pushed["folderUid"] == folder_uid
        assert pushed["dashboard"]["title"] == title
        assert pushed["dashboard"]["id"] is None  # matched by uid, never by a foreign numeric id
        assert pushed["dashboard"]["panels"], "the whole dashboard is sent"
    assert all(auth == "Bearer glsa_test_token" for _, _, auth, _ in grafana.requests)


def test_a_second_push_reuses_the_folder_and_overwrites(grafana: FakeGrafana) -> None:
    push_dashboards(grafana.url, None, DASHBOARDS, folder="Recsys attention")
    push_dashboards(grafana.url, None, DASHBOARDS, folder="Recsys attention")

    assert [(f["title"], f["uid"]) for f in grafana.folders] == [("Recsys attention", "Recsys-attention")]
    assert [m for m, p, _, _ in grafana.requests if p == "/api/folders"] == ["GET", "POST", "GET"]
    assert {d["version"] for d in grafana.dashboards.values()} == {2}


def test_basic_auth_is_sent_instead_of_a_token(grafana: FakeGrafana) -> None:
    expected = "Basic " + base64.b64encode(b"admin:secret").decode()
    grafana.required_auth = expected
    push_dashboards(grafana.url, None, DASHBOARDS, basic_auth=("admin", "secret"))
    assert {auth for _, _, auth, _ in grafana.requests} == {expected}


def test_http_failures_raise_a_clear_error(grafana: FakeGrafana) -> None:
    grafana.required_auth = "Bearer right"
    with pytest.raises(GrafanaPushError, match=r"could not list folders: HTTP 401"):
        push_dashboards(grafana.url, "wrong", DASHBOARDS)

    grafana.required_auth = None
    grafana.fail_dashboards_with = (500, {"message": "database is locked"})
    with pytest.raises(GrafanaPushError, match=r"could not save dashboard 'attnmon-.*HTTP 500.*database is locked"):
        push_dashboards(grafana.url, None, DASHBOARDS)


def test_unreachable_grafana_and_bad_files_raise_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps({"uid": "u", "title": "t", "panels": []}))
    with pytest.raises(GrafanaPushError, match=r"Grafana at http://127.0.0.1:9/: could not list folders"):
        push_dashboards("http://127.0.0.1:9/", None, tmp_path, timeout=2.0)

    (tmp_path / "bad.json").write_text(json.dumps({"title": "no uid"}))
    with pytest.raises(GrafanaPushError, match=r"bad.json: a dashboard needs a 'uid'"):
        push_dashboards("http://127.0.0.1:9/", None, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GrafanaPushError, match="no dashboards"):
        push_dashboards("http://127.0.0.1:9/", None, empty)
