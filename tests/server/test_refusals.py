"""The refusal catalogue and the rule sets, as data: every entry is used, each renders in MESH's
v1 and v2 shapes, and the README's strict/sandbox table names exactly the RuleSet's fields."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import meshpipe.server
from meshpipe.server.refusals import CATALOGUE, Refusal, invalid, missing
from meshpipe.server.rules import RuleSet

PACKAGE = Path(meshpipe.server.__file__).parent


def test_every_catalogue_entry_is_used_by_the_server() -> None:
    texts = {path.name: path.read_text(encoding="utf-8") for path in PACKAGE.glob("*.py")}
    # refusals.py uses its own entries after the catalogue (in invalid())
    texts["refusals.py"] = texts["refusals.py"].split("class Refusal", 1)[1]
    source = "\n".join(texts.values())
    unused = [key for key in CATALOGUE if f'"{key}"' not in source]
    assert unused == []


def test_a_refusal_renders_in_the_version_asked_for() -> None:
    refusal = Refusal(413, "request_too_large", message_id="ABC", maximum=100)
    assert str(refusal) == "413 request_too_large: " + refusal.description
    v1 = refusal.render(1)
    assert v1.status == 413 and v1.content_type == "application/json"
    assert json.loads(v1.text or "") == {
        "messageID": "ABC",
        "errorEvent": "SEND",
        "errorCode": "RequestTooLarge",
        "errorDescription": "A request body must be below 100 bytes; send smaller chunks",
    }
    v2 = refusal.render(2)
    assert v2.content_type == "application/vnd.mesh.v2+json"
    assert json.loads(v2.text or "")["detail"][0]["code"] == "RequestTooLarge"
    plain = json.loads(Refusal(403, "forbidden").render(1).text or "")
    assert plain == {"errorEvent": "", "errorCode": "", "errorDescription": "Forbidden"}
    internal = Refusal(503, "internal", headers={"Retry-After": "2"}).render(2)
    assert internal.status == 503 and internal.headers["Retry-After"] == "2"
    assert set(json.loads(internal.text or "")) == {"message"}
    problems = json.loads(invalid(missing("header", "mex-to")).render(2).text or "")
    assert problems == {
        "detail": [{"type": "missing", "loc": ["header", "mex-to"], "msg": "Field required"}]
    }


def test_the_readme_rules_table_names_every_rule_set_field() -> None:
    readme = (PACKAGE / "README.md").read_text(encoding="utf-8")
    table = readme.split("## strict and sandbox rules, side by side", 1)[1].split("\n\n")[2]
    named = re.findall(r"^\| [^|]+ \| `(\w+)` \|", table, flags=re.MULTILINE)
    fields = [f.name for f in dataclasses.fields(RuleSet) if f.name != "name"]
    assert named == fields
    strict, sandbox = RuleSet.strict(), RuleSet.sandbox()
    assert all(getattr(strict, f) != getattr(sandbox, f) for f in fields)  # each row differs
