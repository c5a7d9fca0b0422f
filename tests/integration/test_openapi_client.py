"""A client generated from the admin API's own OpenAPI document, against the real service.

The document is read from a running `keygate serve` (`GET /v1/openapi.json`, no token),
openapi-python-client generates a Python package from it into a temporary folder, and that
package, imported as any client would be, creates, lists, shows, updates and revokes a key.
Every status and field is asserted exactly: what the document promises is what the service
does, and a document the generator cannot read fails here.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import pytest

from support.service import Service, sha256_hex

PACKAGE = "keygate_admin_client"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("openapi-service")
    s = Service(f"sqlite:{workdir / 'keys.db'}", workdir).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def generated(service, tmp_path_factory):
    """The client package generated from the service's document, imported."""
    out = tmp_path_factory.mktemp("openapi-client")
    answer = service.admin("GET", "/v1/openapi.json", token="")
    assert answer.status == 200, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["openapi"] == "3.1.0"
    document = out / "openapi.json"
    document.write_bytes(answer.body)

    # The generator formats its output with ruff, installed beside it in this venv.
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            "--output-path",
            str(out / PACKAGE),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    said = run.stdout + run.stderr
    assert run.returncode == 0, said
    # Anything the generator could not read would be left out of the client with a warning.
    assert "Warning" not in said and "WARNING" not in said, said

    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [
            m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")
        ]:
            del sys.modules[name]


def test_a_generated_client_manages_a_key(service, generated):
    client_module = importlib.import_module(f"{PACKAGE}.client")
    keys = importlib.import_module(f"{PACKAGE}.api.keys")
    create_key, list_keys, show_key, update_key, revoke_key = (
        importlib.import_module(f"{keys.__name__}.{name}")
        for name in ("create_key", "list_keys", "show_key", "update_key", "revoke_key")
    )
    models = importlib.import_module(f"{PACKAGE}.models")

    base_url = f"http://127.0.0.1:{service.admin_port}"
    client = client_module.AuthenticatedClient(base_url=base_url, token=service.token)

    # Create.
    new = models.NewKey(
        id="web",
        name="Web player",
        owner="user-42",
        cors=models.KeyCors(allowed_origins=["https://app.example"], full_access=False),
        resources=["stream-7f3a"],
    )
    r = create_key.sync_detailed(client=client, body=new)
    assert r.status_code == HTTPStatus.CREATED, r.content
    assert isinstance(r.parsed, models.Created)
    secret = r.parsed.key
    assert re.fullmatch(r"kg_[0-9A-Za-z]{43}[0-9A-Za-z]{6}", secret), secret
    web = {
        "id": "web",
        "name": "Web player",
        "owner": "user-42",
        "cors": {"allowed_origins": ["https://app.example"], "full_access": False},
        "resources": ["stream-7f3a"],
    }
    assert isinstance(r.parsed.entry, models.KeyEntry)
    assert r.parsed.entry.to_dict() == web
    assert r.parsed.entry.cors.allowed_origins == ["https://app.example"]
    # The service keeps the secret's digest: the filter's protocol knows the key by it.
    assert service.filter(f"/v1/filter/keys/{sha256_hex(secret)}").status == 200

    r = create_key.sync_detailed(
        client=client, body=models.NewKey(owner="team-backend")
    )
    assert r.status_code == HTTPStatus.CREATED, r.content
    backend_id = r.parsed.entry.id
    assert backend_id.startswith("key_") and len(backend_id) == 4 + 16
    assert r.parsed.entry.to_dict() == {"id": backend_id, "owner": "team-backend"}

    # A refused entry names its field.
    bad = models.NewKey(
        id="bad", cors=models.KeyCors(allowed_origins=["https://app.example/path"])
    )
    r = create_key.sync_detailed(client=client, body=bad)
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert isinstance(r.parsed, models.Error)
    assert (r.parsed.error, r.parsed.path) == ("Bad Request", "cors.allowed_origins[0]")
    r = create_key.sync_detailed(client=client, body=models.NewKey(id="web"))
    assert r.status_code == HTTPStatus.CONFLICT
    assert r.parsed.to_dict() == {
        "error": "Conflict",
        "message": 'a key with id "web" already exists',
    }

    # List: one owner's keys, then every key a page at a time, in id order.
    r = list_keys.sync_detailed(client=client, owner="user-42")
    assert r.status_code == HTTPStatus.OK, r.content
    assert isinstance(r.parsed, models.KeyPage)
    assert [e.to_dict() for e in r.parsed.entries] == [web]
    assert r.parsed.next_ is None
    r = list_keys.sync_detailed(client=client, limit=1)
    assert [e.id for e in r.parsed.entries] == [backend_id]
    assert r.parsed.next_ == backend_id
    r = list_keys.sync_detailed(client=client, limit=1, after=r.parsed.next_)
    assert [e.id for e in r.parsed.entries] == ["web"]
    assert r.parsed.next_ is None

    # Show.
    r = show_key.sync_detailed("web", client=client)
    assert r.status_code == HTTPStatus.OK, r.content
    assert isinstance(r.parsed, models.Shown)
    assert r.parsed.entry.to_dict() == web

    # Update: a merge patch; null removes, objects merge.
    patch = models.EntryPatch(
        disabled=True,
        name=None,
        cors=models.CorsPatch(
            allowed_origins=["https://app.example", "https://beta.example"]
        ),
    )
    r = update_key.sync_detailed("web", client=client, body=patch)
    assert r.status_code == HTTPStatus.OK, r.content
    changed = {
        "id": "web",
        "owner": "user-42",
        "cors": {
            "allowed_origins": ["https://app.example", "https://beta.example"],
            "full_access": False,
        },
        "resources": ["stream-7f3a"],
        "disabled": True,
    }
    assert r.parsed.entry.to_dict() == changed
    assert r.parsed.entry.disabled is True
    assert isinstance(
        r.parsed.entry.name, importlib.import_module(f"{PACKAGE}.types").Unset
    )
    r = show_key.sync_detailed("web", client=client)
    assert r.parsed.entry.to_dict() == changed
    r = update_key.sync_detailed(
        "web", client=client, body=models.EntryPatch(id="other")
    )
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert r.parsed.path == "id"

    # Revoke.
    r = revoke_key.sync_detailed("web", client=client)
    assert r.status_code == HTTPStatus.NO_CONTENT, r.content
    assert r.content == b""
    r = show_key.sync_detailed("web", client=client)
    assert r.status_code == HTTPStatus.NOT_FOUND
    assert r.parsed.to_dict() == {
        "error": "Not Found",
        "message": 'no key with id "web"',
    }
    r = revoke_key.sync_detailed("web", client=client)
    assert r.status_code == HTTPStatus.NOT_FOUND
    assert service.filter(f"/v1/filter/keys/{sha256_hex(secret)}").status == 404
    r = list_keys.sync_detailed(client=client)
    assert [e.id for e in r.parsed.entries] == [backend_id]


def test_a_generated_client_without_a_token_is_refused(service, generated):
    client_module = importlib.import_module(f"{PACKAGE}.client")
    list_keys = importlib.import_module(f"{PACKAGE}.api.keys.list_keys")
    models = importlib.import_module(f"{PACKAGE}.models")
    anonymous = client_module.Client(base_url=f"http://127.0.0.1:{service.admin_port}")
    r = list_keys.sync_detailed(client=anonymous)
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    assert r.headers["www-authenticate"] == "Bearer"
    assert isinstance(r.parsed, models.Error)
    assert r.parsed.to_dict() == {"error": "Unauthorized", "message": "Invalid API key"}
    wrong = client_module.AuthenticatedClient(
        base_url=f"http://127.0.0.1:{service.admin_port}", token="kg_not_an_admin"
    )
    assert list_keys.sync_detailed(client=wrong).status_code == HTTPStatus.UNAUTHORIZED
