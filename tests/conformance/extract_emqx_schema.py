"""Cut the parts of EMQX's published configuration schema that emqx/emqx.conf uses out of the full file.

The emqx-docs repository publishes the schema of every EMQX release as one JSON document (``hocon/hocon-ee-vX.Y.Z-
en.json``, about 4 MB: every field with its documentation). This keeps, for the roots and the connector/action
types the project configures, each field's name, its type as the schema writes it, and whether its documentation
marks it deprecated — the documentation text itself is dropped. Usage::

    python -m tests.conformance.extract_emqx_schema hocon-ee-v5.10.4-en.json > roots.json

Its ``roots`` member is the ``roots`` member of emqx-5.10.4-schema.json (README.md there says where the input comes
from and how the vendored file was made).
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

# What emqx.conf configures: whole roots, and the members of the roots that hold one struct per type.
ROOTS = ("node", "cluster", "dashboard", "api_key", "listeners", "mqtt", "authentication", "authorization",
         "connectors", "actions", "flapping_detect")
TYPED_MEMBERS = {"connectors": ("pgsql", "http"), "actions": ("pgsql", "http")}
UNION_MEMBERS = {"authentication": ("http_post",), "authorization.sources": ("file", "http_post")}
# Sub-structs whose fields emqx.conf never sets (cluster discovery back-ends, dashboard SSO, QUIC…): names only.
SHALLOW = re.compile(r"^(cluster\.(static|dns|etcd|k8s|links)|dashboard\.sso|dashboard\.listeners\.https|"
                     r"listeners\.quic|listeners\.wss\.ssl_options|actions\.(pgsql|http)\.fallback_actions)$")
DEPRECATED = re.compile(r"^\s*Deprecated since", re.I)


def _field(node: dict[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": node.get("type", "")}
    if DEPRECATED.match(node.get("doc") or ""):
        out["deprecated"] = True
    refs = node.get("refs") or []
    if refs and not SHALLOW.match(path):
        keep = UNION_MEMBERS.get(path)
        out["refs"] = {ref["text"]: {f["text"]: _field(f, f"{path}.{f['text']}") for f in ref.get("fields", [])}
                       for ref in refs if keep is None or ref["text"] in keep}
    return out


def extract(doc: dict[str, Any]) -> dict[str, Any]:
    roots = {f["text"]: f for f in doc["fields"]}
    kept: dict[str, Any] = {}
    for name in ROOTS:
        node = roots[name]
        if name in TYPED_MEMBERS:
            [ref] = node["refs"]
            members = {f["text"]: f for f in ref["fields"]}
            kept[name] = {"type": node["type"],
                          "members": {t: _field(members[t], f"{name}.{t}") for t in TYPED_MEMBERS[name]}}
        else:
            kept[name] = _field(node, name)
    return kept


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        roots = extract(json.load(handle))
    json.dump({"roots": roots}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
