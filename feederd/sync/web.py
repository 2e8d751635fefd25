"""``feeder-sync review --web``: the review page, served to this machine's browser only.

Werkzeug provides the routing, the request/response objects and a small threaded server: one
well-kept dependency, no async framework, nothing to build. The page is plain HTML/CSS/JS kept
as package data and read into memory at start, so it works offline.

Safe by default:

- the socket binds 127.0.0.1 only, and requests must name it (or ``localhost``) as their Host
  (so a web page elsewhere cannot reach it through DNS rebinding);
- every URL starts with a random token (``secrets.token_urlsafe``), printed with the link;
  anything else gets 404;
- no part of a request path reaches the file system: the page and its scripts are in memory,
  an image is found by sample id and content hash in the workspace index, the report figure
  by the path ``state.json`` records;
- decisions come as JSON POSTs (a cross-site form cannot send them) and are written through
  :func:`feederd.sync.review.decide`, each at once: a reload or a killed server loses nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from werkzeug.exceptions import BadRequest, HTTPException, NotFound
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from feederd.errors import SyncError
from feederd.sync import review, webviews
from feederd.sync.plots import PAIR_PNG
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC = {"review.js": "text/javascript", "labels.js": "text/javascript",
          "evaluation.js": "text/javascript", "review.css": "text/css"}
MAX_BODY = 1 << 20
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _assets() -> dict[str, bytes]:
    folder = resources.files("feederd.sync") / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *STATIC)}


@dataclass
class ReviewApp:
    """The WSGI application of one workspace's review page."""

    workspace: Workspace
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    session: review.ReviewResult = field(default_factory=review.ReviewResult)

    def __post_init__(self) -> None:
        self.assets = _assets()
        self.lock = threading.Lock()  # one decision at a time (the workspace lock is a flock)
        self.routes = Map([
            Rule("/<token>/", endpoint="page"),
            Rule("/<token>/static/<name>", endpoint="static"),
            Rule("/<token>/api/samples", endpoint="samples"),
            Rule("/<token>/api/decide", endpoint="decide", methods=["POST"]),
            Rule("/<token>/api/report", endpoint="report"),
            Rule("/<token>/img/<sample_id>/<sha256>", endpoint="image"),
            Rule("/<token>/report/confusion.png", endpoint="report_png"),
        ], strict_slashes=True)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = MAX_BODY
        try:
            response = self.dispatch(request)
        except RequestRedirect as exc:  # /<token> -> /<token>/
            response = exc.get_response(environ)
        except HTTPException as exc:
            response = _json({"error": exc.description}, exc.code or 500)
        except SyncError as exc:
            response = _json({"error": str(exc)}, 400)
        except Exception:
            logger.exception("review page: %s %s failed", request.method, request.path)
            response = _json({"error": "internal error; see the feeder-sync log"}, 500)
        response.headers.update(HEADERS)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        if request.host.rsplit(":", 1)[0] not in (HOST, "localhost"):
            raise NotFound()
        endpoint, matched = self.routes.bind_to_environ(request.environ).match()
        args = dict(matched)
        if not hmac.compare_digest(str(args.pop("token")).encode(), self.token.encode()):
            raise NotFound()
        handler: Callable[..., Response] = getattr(self, f"on_{endpoint}")
        return handler(request, **args)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/{self.token}/"

    # --- endpoints ------------------------------------------------------------------------

    def on_page(self, request: Request) -> Response:
        return Response(self.assets["index.html"], content_type="text/html; charset=utf-8")

    def on_static(self, request: Request, name: str) -> Response:
        if name not in STATIC:
            raise NotFound()
        return Response(self.assets[name], content_type=f"{STATIC[name]}; charset=utf-8")

    def on_samples(self, request: Request) -> Response:
        return _json(webviews.samples_view(self.workspace))

    def on_report(self, request: Request) -> Response:
        return _json(webviews.report_view(self.workspace))

    def on_image(self, request: Request, sample_id: str, sha256: str) -> Response:
        try:
            path = webviews.image_path(self.workspace, sample_id, sha256)
            data = path.read_bytes()
        except (SyncError, OSError) as exc:
            raise NotFound(str(exc)) from None
        response = Response(data, content_type="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=86400, immutable"
        return response

    def on_report_png(self, request: Request) -> Response:
        folder = webviews.report_dir(self.workspace)
        path = folder / PAIR_PNG if folder else None
        if path is None or not path.is_file():
            raise NotFound("no confusion-matrix figure in the last report")
        return Response(path.read_bytes(), content_type="image/png")

    def on_decide(self, request: Request) -> Response:
        if not request.is_json:
            raise BadRequest("send the decisions as application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("decisions"), list):
            raise BadRequest('expected {"decisions": [...]}')
        decisions = [_decision(item) for item in body["decisions"]]
        new_label = body.get("new_label")
        with self.lock:
            result = review.decide(self.workspace, decisions, record=False,
                                   new_labels=[new_label] if isinstance(new_label, str) else [])
            self._remember(result)
        saved = [{"id": i, "sha256": sha, "review": {"source": source, "label": label}
                  if source else None} for i, sha, source, label in result.written]
        return _json({"saved": saved, "counts": webviews.counts(self.workspace),
                      "new_labels": sorted(set(result.new_labels))})

    def _remember(self, result: review.ReviewResult) -> None:
        for name in ("labelled", "accepted", "excluded", "new_labels"):
            getattr(self.session, name).extend(getattr(result, name))

    def close(self) -> None:
        """One history line for the whole page session."""
        if self.session.labelled or self.session.accepted or self.session.excluded:
            review.record_review(self.workspace, self.session, via="web")


def _decision(item: Any) -> review.Decision:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str | int):
        raise BadRequest("each decision needs an id")
    action = item.get("action")
    if action not in review.ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(review.ACTIONS)}")
    fields = {k: item.get(k) for k in ("label", "sha256", "source")}
    if any(v is not None and not isinstance(v, str) for v in fields.values()):
        raise BadRequest("label, sha256 and source must be strings")
    return review.Decision(str(item["id"]), str(action), **fields)


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status=status,
                    content_type="application/json")


# --- running it -------------------------------------------------------------------------------

def start(workspace: Workspace, port: int = 0) -> tuple[ReviewApp, BaseWSGIServer]:
    """Bind 127.0.0.1:``port`` (0: a free one) and build the server; SyncError if taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise SyncError(f"cannot listen on {HOST}:{port} ({exc.strerror}); choose another "
                        "--port or leave it out for a free one") from exc
    app = ReviewApp(workspace.require(), port=sock.getsockname()[1])
    requests_log = logging.getLogger("werkzeug")
    if requests_log.level == logging.NOTSET and logging.getLogger().level > logging.DEBUG:
        requests_log.setLevel(logging.WARNING)  # one line per image otherwise (with the token)
    server = make_server(HOST, app.port, app, threaded=True, fd=sock.fileno())
    sock.close()  # the server holds its own duplicate of the socket
    return app, server


def has_browser() -> bool:
    """A graphical browser to open: not on a headless Linux box (where ``webbrowser`` would
    start a text browser in this terminal)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def serve(workspace: Workspace, *, port: int = 0, open_browser: bool = True) -> int:
    """Serve the review page until Ctrl+C or SIGTERM; returns the exit code."""
    app, server = start(workspace, port)
    sys.stdout.write(f"review page for '{workspace.device}': {app.url}\n"
                     "(only this machine can open it; Ctrl+C stops)\n")
    sys.stdout.flush()
    if open_browser and has_browser():
        import webbrowser

        webbrowser.open(app.url)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # stop as cleanly as on Ctrl+C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
