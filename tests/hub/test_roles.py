"""One role rule everywhere: roles are named, admin always passes, others only where named.

For each role, an API call and a page it may reach and one it may not, on the same hub; and
the rule itself refuses a check that names no role (the old default differed between the
API, where it meant "admin only", and the pages, where it meant "anyone").
"""

from __future__ import annotations

import pytest

from caravane.hub.auth import ANY_ROLE, ROLES, Principal, authorize, may
from caravane.hub.errors import Forbidden
from tests.web.test_safety import Browser

from .conftest import RunningHub
from .util import http

MAY_API = {
    "admin": ("GET", "/api/v1/audit", None),
    "curator": ("POST", "/api/v1/channels", {"id": "maths"}),
    "field_agent": ("GET", "/api/v1/nodes", None),
}
MAY_NOT_API = {
    "curator": ("GET", "/api/v1/audit", None),
    "field_agent": ("POST", "/api/v1/channels", {"id": "sciences"}),
}
MAY_PAGE = {"admin": "/ui/register", "curator": "/ui/publish", "field_agent": "/ui/routes"}
MAY_NOT_PAGE = {"curator": "/ui/register", "field_agent": "/ui/publish"}


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_what_it_may_and_nothing_else(sqlite_hub: RunningHub, role: str):
    token = sqlite_hub.admin if role == "admin" else sqlite_hub.token(role)
    base = sqlite_hub.url
    method, path, body = MAY_API[role]
    ans = http(method, base + path, body, token)
    assert ans.status in (200, 201), (role, path, ans.body)
    b = Browser(base)
    b.sign_in(token)
    status, html = b.call(MAY_PAGE[role])
    assert status == 200 and "<form" in html, (role, MAY_PAGE[role])
    assert b.call("/ui/fleet")[0] == 200  # every signed-in role sees the fleet
    if role == "admin":  # admin passes everywhere: every refused call above is open to it
        for m, p, bd in MAY_NOT_API.values():
            bd = {"id": "admin-made"} if bd else None
            assert http(m, base + p, bd, token).status in (200, 201), p
        for p in MAY_NOT_PAGE.values():
            assert b.call(p)[0] == 200, p
        return
    method, path, body = MAY_NOT_API[role]
    ans = http(method, base + path, body, token)
    assert ans.status == 403 and role in ans.json()["error"], (role, path, ans.body)
    status, html = b.call(MAY_NOT_PAGE[role])
    assert status == 403, (role, MAY_NOT_PAGE[role])


def test_the_rule_itself():
    for role in ROLES:
        assert may(role, ("curator",)) == (role in ("admin", "curator"))
        assert may(role, ANY_ROLE)
    with pytest.raises(ValueError, match="name them"):
        may("admin", ())
    with pytest.raises(Forbidden, match="curator or field_agent; your token is nobody"):
        authorize("nobody", ("curator", "field_agent"))
    Principal("a", "admin").require("curator")  # admin always passes
    with pytest.raises(Forbidden):
        Principal("c", "curator").require("admin")
    with pytest.raises(TypeError):
        Principal("a", "admin").require()  # type: ignore[call-arg]
