"""`caravane hub token list / revoke`: what an admin sees, and a revoked token opens nothing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.hub.conftest import RunningHub
from tests.hub.util import cli, http
from tests.web.test_safety import Browser


def write_config(rh: RunningHub) -> Path:
    """The hub.toml of a test hub, as `hub init` would have written it."""
    path = rh.data / "hub.toml"
    path.write_text(rh.hub.config.to_toml(), encoding="utf-8")
    return path


def run_json(*args: str) -> dict:
    r = cli(*args, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_list_and_a_revoked_token_gets_401_on_the_api_and_the_pages(
    running_hub: RunningHub,
) -> None:
    rh = running_hub
    config = str(write_config(rh))
    secret = run_json(
        "hub", "token", "create", "--config", config, "--name", "amina", "--role", "curator"
    )["token"]
    assert http("GET", rh.url + "/api/v1/channels", token=secret).status == 200
    listed = cli("hub", "token", "list", "--config", config)
    assert listed.returncode == 0 and "amina" in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout and "crv_" not in listed.stdout
    browser = Browser(rh.url)
    csrf = browser.sign_in(secret)
    assert browser.call("/ui/channels")[0] == 200

    out = run_json("hub", "token", "revoke", "amina", "--config", config)
    assert len(out["revoked"]) == 1

    answer = http("GET", rh.url + "/api/v1/channels", token=secret)
    assert answer.status == 401 and "revoked" in answer.json()["error"]
    # the open session ends at once: pages send to sign-in, forms are refused with 401
    status, body = browser.call("/ui/channels")
    assert status == 200 and 'name="token"' in body
    assert browser.call("/ui/logout", {"csrf": csrf})[0] == 401
    # and the token no longer signs in
    fresh = Browser(rh.url)
    _, page = fresh.call("/ui/login")
    login_csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert fresh.call("/ui/login", {"csrf": login_csrf, "token": secret})[0] == 401

    out = cli("hub", "token", "list", "--config", config, "--json")
    amina = next(r for r in json.loads(out.stdout)["tokens"] if r["name"] == "amina")
    assert amina["role"] == "curator" and amina["revoked"] is True and amina["created"]
    assert set(amina) == {"id", "name", "role", "created", "revoked"}  # never the secret
    assert secret not in out.stdout and "crv_" not in out.stdout
    # the admin's own token still works, and the audit log says who revoked what
    assert http("GET", rh.url + "/api/v1/channels", token=rh.admin).status == 200
    audit = http("GET", rh.url + "/api/v1/audit", token=rh.admin).json()["audit"]
    assert any(a["action"] == "token.revoke" and a["detail"]["name"] == "amina" for a in audit)


def test_revoke_by_id_and_ambiguous_or_unknown_names(sqlite_hub: RunningHub) -> None:
    rh = sqlite_hub
    config = str(write_config(rh))
    first = rh.hub.create_token("shared", "field_agent")
    second = rh.hub.create_token("shared", "field_agent")
    r = cli("hub", "token", "revoke", "shared", "--config", config)
    assert r.returncode == 1 and "2 active tokens are named 'shared'" in r.stderr
    assert "--all" in r.stderr
    assert http("GET", rh.url + "/api/v1/channels", token=first).status == 200  # nothing revoked

    ids = [t["id"] for t in rh.hub.list_tokens() if t["name"] == "shared"]
    assert run_json("hub", "token", "revoke", str(ids[0]), "--config", config)["revoked"] == [
        ids[0]
    ]
    assert http("GET", rh.url + "/api/v1/channels", token=first).status == 401
    assert http("GET", rh.url + "/api/v1/channels", token=second).status == 200
    r = cli("hub", "token", "revoke", str(ids[0]), "--config", config)
    assert r.returncode == 1 and "already revoked" in r.stderr

    third = rh.hub.create_token("shared", "field_agent")
    out = run_json("hub", "token", "revoke", "shared", "--all", "--config", config)
    assert len(out["revoked"]) == 2
    assert http("GET", rh.url + "/api/v1/channels", token=second).status == 401
    assert http("GET", rh.url + "/api/v1/channels", token=third).status == 401

    r = cli("hub", "token", "revoke", "nobody", "--config", config)
    assert r.returncode == 1 and "no token with id or name 'nobody'" in r.stderr
