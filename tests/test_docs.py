"""Tests for the interactive docs: /docs and /redoc work offline, and Swagger UI's
Authorize button logs in through /auth/login.

Patterns shown:
- The HTML pages are parsed with the stdlib `HTMLParser`: every `src`, `href` and
  `spec-url` attribute and every `url: '...'` in the inline script is an asset URL.
- No `http://` or `https://` anywhere in a page: the docs load nothing from a CDN, so
  they work without internet (fastapi-offline serves Swagger UI and ReDoc itself).
- Every asset URL a page names, and every `url(...)` in its stylesheets, answers 200.

Imports: conftest, live_server, main.
"""

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from config import Settings
from conftest import DEFAULT_PASSWORD, TEST_SECRET_KEY, MakeSettings, signup
from live_server import child_environ, copy_app
from main import create_app

API = "/api/v1"

SCRIPT_URL = re.compile(r"""\burl:\s*['"]([^'"]+)['"]""")
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)""")
OAUTH2_REDIRECT_URL = re.compile(r"""oauth2RedirectUrl:\s*window\.location\.origin\s*\+\s*['"]([^'"]+)['"]""")

DOCS_ASSETS = [
    "/static-offline-docs/swagger-ui.css",
    "/static-offline-docs/favicon.png",
    "/static-offline-docs/swagger-ui-bundle.js",
    "/api/v1/openapi.json",
]
REDOC_ASSETS = [
    "/static-offline-docs/favicon.png",
    "/api/v1/openapi.json",
    "/static-offline-docs/redoc.standalone.js",
]


class AssetCollector(HTMLParser):
    """Collects the URL-valued attributes of every tag, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def asset_urls(html: str) -> list[str]:
    """Every URL the page names: tag attributes, then `url: '...'` in inline scripts."""
    collector = AssetCollector()
    collector.feed(html)
    collector.close()
    return collector.urls + SCRIPT_URL.findall(html)


@pytest.mark.parametrize(("page", "expected"), [("/docs", DOCS_ASSETS), ("/redoc", REDOC_ASSETS)])
def test_docs_page_names_only_same_origin_assets(client: TestClient, page: str, expected: list[str]) -> None:
    """The page names exactly its own assets, all paths on this app, and no outside URL."""
    response = client.get(page)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert re.findall(r"https?://\S+", response.text) == []
    assert asset_urls(response.text) == expected
    for url in expected:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, url[:1]) == ("", "", "/"), url


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_assets_answer_200(client: TestClient, page: str) -> None:
    """Every asset the page names answers 200 from the app, and stylesheets fetch nothing more."""
    for url in asset_urls(client.get(page).text):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.content, url
        if url.endswith(".css"):
            # Swagger UI's icons are inline `data:` images; anything else would be a fetch.
            assert [ref for ref in CSS_URL.findall(response.text) if not ref.startswith("data:")] == []


def test_swagger_ui_sends_the_schema_to_no_validator(client: TestClient) -> None:
    """Swagger UI's default validator badge would send the schema's URL to an outside service."""
    assert '"validatorUrl": null' in client.get("/docs").text


def test_swagger_ui_oauth2_redirect_page_answers(client: TestClient) -> None:
    """The OAuth2 redirect page that /docs names is served by the app."""
    redirect_urls = OAUTH2_REDIRECT_URL.findall(client.get("/docs").text)
    assert redirect_urls == ["/docs/oauth2-redirect"]
    response = client.get(redirect_urls[0])
    assert response.status_code == 200, response.text
    assert "swaggerUIRedirectOauth2" in response.text
    assert re.findall(r"https?://\S+", response.text) == []


def test_openapi_oauth2_token_url_is_the_login_route(client: TestClient) -> None:
    """The Authorize button posts to the schema's tokenUrl, which is /api/v1/auth/login."""
    schema = client.get("/api/v1/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "OAuth2PasswordBearer": {
            "type": "oauth2",
            "flows": {"password": {"scopes": {}, "tokenUrl": "/api/v1/auth/login"}},
        }
    }
    assert "post" in schema["paths"]["/api/v1/auth/login"]


def test_app_on_another_api_prefix_serves_everything_there(make_settings: MakeSettings) -> None:
    """`create_app(settings)` with API_V1_STR=/v2 serves everything under /v2."""
    with TestClient(create_app(make_settings(API_V1_STR="/v2"))) as client:
        user = {"email": "ada@example.com", "username": "ada", "password": DEFAULT_PASSWORD}
        assert client.post("/v2/users/", json=user).status_code == 201
        assert client.post("/v2/auth/login", data={"username": "ada", "password": DEFAULT_PASSWORD}).status_code == 200
        assert client.get("/api/v1/openapi.json").status_code == 404


def test_authorize_button_follows_api_v1_str_of_create_apps_settings(make_settings: MakeSettings) -> None:
    """`create_app(settings)` with API_V1_STR=/v2 documents its own login route as the tokenUrl,
    not the one of the environment `auth.py` was imported in."""
    with TestClient(create_app(make_settings(API_V1_STR="/v2"))) as client:
        schema = client.get("/v2/openapi.json").json()
    flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == "/v2/auth/login"


def test_authorize_button_follows_api_v1_str_of_the_environment(tmp_path: Path) -> None:
    """`uvicorn main:app` with API_V1_STR=/v2 documents /v2/auth/login as the tokenUrl
    (built from the settings, FastAPI's documented form)."""
    script = "import json, main; print(json.dumps(main.app.openapi()['components']['securitySchemes']))"
    environ = child_environ(API_V1_STR="/v2", SECRET_KEY=TEST_SECRET_KEY, DATABASE_URL=f"sqlite:///{tmp_path}/a.db")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=copy_app(tmp_path / "app"), env=environ, capture_output=True, check=True
    )
    flows = json.loads(result.stdout)["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == "/v2/auth/login"


def test_swagger_ui_authorize_form_logs_in(client: TestClient) -> None:
    """The form Swagger UI posts to the tokenUrl (with `grant_type` and empty scopes) gets a bearer token."""
    signup(client, "ada")
    form = {"grant_type": "password", "username": "ada", "password": DEFAULT_PASSWORD, "scope": ""}
    response = client.post("/api/v1/auth/login", data=form)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "bearer"
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "ada"


@pytest.mark.parametrize("path", ["/docs", "/redoc", f"{API}/openapi.json"])
def test_docs_and_schema_are_served(client: TestClient, path: str) -> None:
    """Swagger UI, ReDoc and the schema answer 200 at their SPEC paths."""
    assert client.get(path).status_code == 200


def test_openapi_operation_ids_are_tag_and_function_name(client: TestClient) -> None:
    """Operation ids read `tag-function_name` and are unique."""
    schema = client.get(f"{API}/openapi.json").json()
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert "users-create_user" in ids and "auth-login" in ids and "items-read_items" in ids
    for operation_id in ids:
        tag, _, name = operation_id.partition("-")
        assert tag and name.isidentifier(), operation_id


def test_openapi_never_shows_the_password_hash(client: TestClient) -> None:
    """No schema of the API mentions hashed_password or security_stamp."""
    text = client.get(f"{API}/openapi.json").text
    assert "hashed_password" not in text
    assert "security_stamp" not in text


def test_openapi_documents_every_user_email_as_an_email(client: TestClient) -> None:
    """Responses skip re-checking stored emails, yet the schema still says `format: email`."""
    schemas = client.get(f"{API}/openapi.json").json()["components"]["schemas"]
    for name in ("UserCreate", "UserPublic", "UserUpdateMe"):
        assert schemas[name]["properties"]["email"]["format"] == "email", name


def test_swagger_authorize_button_logs_in_through_auth_login(client: TestClient) -> None:
    """The OAuth2 password flow of the schema points at the login endpoint."""
    schemes = client.get(f"{API}/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == f"{API}/auth/login"


def test_a_status_code_missing_from_the_schema_fails_the_test(settings: Settings) -> None:
    """conftest's autouse hook: a throwaway route that answers a 409 it does not document
    fails whichever test meets it, naming the route and the code."""
    app = create_app(settings)

    @app.get("/throwaway")
    def conflict() -> None:
        raise HTTPException(status_code=409, detail="Conflict")

    with TestClient(app) as client, pytest.raises(AssertionError, match="GET /throwaway answered 409"):
        client.get("/throwaway")
