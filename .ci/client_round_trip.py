"""A round trip through the client that openapi-python-client generated from our schema.

Signs a new user up, logs in, creates an item and lists items, checking each answer's
type and values. `.ci/contract.sh` runs it in the client's own virtual environment:

    python .ci/client_round_trip.py http://127.0.0.1:8000

Imports: the generated `reference_api_client` package only (not the app).
"""

import secrets
import sys
from datetime import timedelta
from typing import TypeVar

from reference_api_client import AuthenticatedClient, Client
from reference_api_client.api.auth import auth_login, auth_logout, auth_refresh_access_token
from reference_api_client.api.items import items_create_item, items_read_items
from reference_api_client.api.users import users_create_user, users_read_user_me
from reference_api_client.models import (
    BodyAuthLogin,
    ItemCreate,
    ItemPublic,
    ItemsPublic,
    RefreshRequest,
    Token,
    UserCreate,
    UserPublic,
)

Expected = TypeVar("Expected")


def expect(kind: type[Expected], value: object, step: str) -> Expected:
    """`value` if it is a `kind` (the parsed success body), else stop with what came back."""
    if not isinstance(value, kind):
        sys.exit(f"{step}: expected {kind.__name__}, got {value!r}")
    return value


def check(condition: bool, step: str) -> None:
    if not condition:
        sys.exit(f"{step}: check failed")


def round_trip(base_url: str) -> None:
    username = f"client-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    with Client(base_url=base_url, raise_on_unexpected_status=True) as client:
        sign_up = UserCreate(email=f"{username}@example.com", username=username, password=password)
        user = expect(UserPublic, users_create_user.sync(client=client, body=sign_up), "sign up")
        check(user.username == username and not user.is_superuser, "sign up")
        check(user.created_at.utcoffset() == timedelta(0), "sign up: created_at is UTC")
        print(f"signed up {user.username} (id {user.id})")

        login = BodyAuthLogin(username=username, password=password)
        first = expect(Token, auth_login.sync(client=client, body=login), "log in")
        check(first.token_type == "bearer" and first.expires_in > 0 and bool(first.refresh_token), "log in")
        print(f"logged in: {first.token_type} token, expires in {first.expires_in} s")
        body = RefreshRequest(refresh_token=first.refresh_token)
        token = expect(Token, auth_refresh_access_token.sync(client=client, body=body), "refresh")
        check(token.refresh_token != first.refresh_token, "refresh: a new refresh token")
        print("refreshed: a new pair")

    with AuthenticatedClient(base_url=base_url, token=token.access_token, raise_on_unexpected_status=True) as client:
        me = expect(UserPublic, users_read_user_me.sync(client=client), "read /users/me")
        check(me.id == user.id, "read /users/me")

        titles = ["First item", "Second item"]
        created: list[int] = []
        for title in titles:
            new_item = ItemCreate(title=title, description=f"{title}, from the generated client")
            item = expect(ItemPublic, items_create_item.sync(client=client, body=new_item), "create item")
            check(item.title == title and item.owner_id == user.id, "create item")
            created.append(item.id)
            print(f"created item {item.id}: {item.title!r}")

        page = expect(ItemsPublic, items_read_items.sync(client=client), "list items")
        check(page.count == len(titles), "list items: count")
        check([item.id for item in page.data] == created, "list items: own items, by id")
        check([item.title for item in page.data] == titles, "list items: titles")
        print(f"listed {page.count} items: {[item.id for item in page.data]}")

    with Client(base_url=base_url) as client:
        response = auth_logout.sync_detailed(client=client, body=RefreshRequest(refresh_token=token.refresh_token))
        check(response.status_code == 204, "log out")
        gone = auth_refresh_access_token.sync_detailed(client=client, body=RefreshRequest(token.refresh_token))
        check(gone.status_code == 401, "log out: the session is over")
        print("logged out: the refresh token is refused")
    print("client round trip passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python .ci/client_round_trip.py BASE_URL")
    round_trip(sys.argv[1])
