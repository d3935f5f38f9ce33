"""The page's files over HTTP: content types, cache headers, the CSP, and no way out of
the static folder.

The app is the real one (``create_app``), reached in-process through httpx (Starlette's
TestClient) without starting its lifespan: the page's routes need no model, so these
tests need no trained package and stay in the fast set. The browser tests
(``test_web_browser.py``) check the same headers on a real ``shipyard serve``.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shipyard.serve import web
from shipyard.serve.app import create_app
from shipyard.serve.settings import ServeSettings

ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    home = tmp_path_factory.mktemp("web-static")
    settings = ServeSettings(package=str(home / "no-package"), home=str(home))
    # not entered as a context manager: the lifespan (model loading) never runs
    return TestClient(create_app(settings))


def assert_self_only_csp(headers: object) -> None:
    csp = headers["content-security-policy"]  # type: ignore[index]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'self'"
    for name in ("script-src", "style-src", "img-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert "unsafe" not in csp
    assert "*" not in csp
    assert "http" not in csp


def test_the_page_is_html_with_a_self_only_csp(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert_self_only_csp(response.headers)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    # nothing from another origin, nothing inline
    assert "http://" not in response.text
    assert "https://" not in response.text
    assert "<style" not in response.text
    assert " style=" not in response.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), "inline script"
    assert not re.search(r"\son[a-z]+=", response.text), "inline event handler"


def test_assets_are_versioned_cached_for_good_and_revalidated_otherwise(
    client: TestClient,
) -> None:
    page = client.get("/").text
    links = re.findall(r'(?:src|href)="(/static/[^"?]+)\?v=([0-9a-f]+)"', page)
    assert {path for path, _ in links} == {
        "/static/app.js",
        "/static/style.css",
        "/static/favicon.svg",
    }
    for path, version in links:
        fresh = client.get(f"{path}?v={version}")
        assert fresh.status_code == 200, path
        assert fresh.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert fresh.headers["etag"] == f'"{version}"'
        assert_self_only_csp(fresh.headers)
        stale = client.get(f"{path}?v=0000")
        assert stale.headers["cache-control"] == "no-cache"
        plain = client.get(path)
        assert plain.headers["cache-control"] == "no-cache"
        assert plain.content == fresh.content


def test_every_imported_module_is_served_and_revalidated(client: TestClient) -> None:
    """The script's imports (``import ... from "./try.js"``) carry no hash: they are
    served, as JavaScript, and revalidated on each visit."""
    imported = set()
    for script in web.STATIC_DIR.glob("*.js"):
        imported |= set(re.findall(r'from "\./([\w.-]+\.js)"', script.read_text()))
    assert imported == {"common.js", "try.js", "monitor.js", "prom.js"}
    for name in imported:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"


def test_an_unchanged_file_answers_304(client: TestClient) -> None:
    first = client.get("/static/app.js")
    again = client.get("/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    changed = client.get("/static/app.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    page = client.get("/")
    assert client.get("/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("common.js", "text/javascript; charset=utf-8"),
        ("try.js", "text/javascript; charset=utf-8"),
        ("monitor.js", "text/javascript; charset=utf-8"),
        ("prom.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_have_their_content_type(
    client: TestClient, name: str, media_type: str
) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == (web.STATIC_DIR / name).read_bytes()
    head = client.head(f"/static/{name}")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize(
    "path",
    [
        "/static/%2e%2e/web.py",
        "/static/..%2fweb.py",
        "/static/%2e%2e%2f%2e%2e%2fapp.py",
        "/static/../web.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/web/app.js",
        "/static/nope.js",
        "/static/",
        "/static/index.html",  # the raw file: the page is served at / only
    ],
)
def test_nothing_outside_the_list_of_files_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, path
    assert response.json()["kind"] == "not_found"
    assert "import " not in response.text
    assert "root:" not in response.text


def test_web_routes_stay_out_of_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith("/static")]
    assert "/predict" in paths  # the schema itself is still there


def test_every_static_file_ships_in_the_package() -> None:
    """pyproject's package-data globs cover every file of the folder (a wheel has them)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["shipyard"]
    package_root = web.STATIC_DIR.parents[1]  # src/shipyard
    files = [p.relative_to(package_root).as_posix() for p in web.STATIC_DIR.iterdir()]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    assert set(web.assets()) == {p.name for p in web.STATIC_DIR.iterdir()}
