"""The whole auth matrix: every tool, every role, both transports, and
every way of presenting a key. A role below the tool's is 403 before the
input is even read; a role at or above it is never 401/403."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from storectl.service.keys import ROLES, at_least
from storectl.service.tools import TOOLS


@pytest.mark.parametrize("tool", list(TOOLS))
def test_every_tool_for_every_role(http: httpx.Client, keys: dict[str, str], tool: str) -> None:
    needed = TOOLS[tool].role
    for role in ROLES:
        key = keys[role]
        raw = http.post(f"/tools/{tool}", content=b"{}", headers={"X-Api-Key": key})
        wrapped = http.post(
            f"/k/{key}/tools", content=msgspec.json.encode({"tool": tool, "input": {}})
        )
        for response in (raw, wrapped):
            if at_least(role, needed):
                assert response.status_code not in (401, 403), (tool, role, response.text)
            else:
                assert response.status_code == 403, (tool, role, response.text)
                article = "an" if needed == "admin" else "a"
                assert f"needs {article} {needed} key (this key is a {role})" in response.text
        for bad in ("", keys["revoked"], "esk_" + "0" * 43):
            headers = {"X-Api-Key": bad} if bad else {}
            refused = http.post(f"/tools/{tool}", content=b"{}", headers=headers)
            assert refused.status_code == 401, (tool, bad)
            assert refused.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "present",
    ["bearer", "bearer-lowercase", "x-api-key", "path", "query"],
)
def test_every_way_of_presenting_a_key(
    http: httpx.Client, keys: dict[str, str], present: str
) -> None:
    key = keys["reader"]
    body = b'{"tool":"storage.list_trades","input":{"limit":1}}'
    path, headers = "/tools", {}
    if present == "bearer":
        headers = {"Authorization": f"Bearer {key}"}
    elif present == "bearer-lowercase":
        headers = {"authorization": f"bearer {key}"}
    elif present == "x-api-key":
        headers = {"X-Api-Key": key}
    elif present == "path":
        path = f"/k/{key}/tools"
    else:
        path = f"/tools?key={key}"
    assert http.post(path, content=body, headers=headers).status_code == 200
    # the same, one character off: refused
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    for name, value in list(headers.items()):
        headers[name] = value.replace(key, wrong)
    assert http.post(path.replace(key, wrong), content=body, headers=headers).status_code == 401
