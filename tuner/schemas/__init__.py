"""The JSON Schema (draft 2020-12) of every document tuner prints with --json or keeps
on disk, one file per schema version, shipped inside the package.

A document names its schema in its "schema" key ("tuner.report/3"); the file for it is
`tuner.report-3.json` here, whose `properties.schema.const` is that same name.  Shared
definitions live in common.json and are referenced by their URN.  The schemas are the
one home of what each key means: docs/json.md is generated from their descriptions
(`python -m tuner.schemas docs/json.md`; a test fails when it is stale), and the tests
validate each command's real output against them.

Adding a command with --json: add its schema file here and a row to
tests/test_schemas.py's COMMANDS table.  Changing what an existing key means, or its
type, is a new version: a new file (tuner.x-2.json) replaces the old one, its
"x-changes" says what changed (docs/json.md shows it), and the code prints the new
name.  The old file stays only while tuner still reads such documents (the journal an
older tuner left: tuner.journal-1.json).

Validation needs the `jsonschema` package (in the test extra), imported only by
`validate`; loading and listing the schemas needs nothing beyond the standard library.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))
COMMON = "common.json"


def _files() -> List[str]:
    return sorted(f for f in os.listdir(SCHEMA_DIR) if f.endswith(".json") and f != COMMON)


def file_name(schema_id: str) -> str:
    """'tuner.report/3' -> 'tuner.report-3.json'."""
    return schema_id.replace("/", "-") + ".json"


def _read(name: str) -> Dict[str, Any]:
    with open(os.path.join(SCHEMA_DIR, name)) as f:
        return json.load(f)


def load(schema_id: str) -> Dict[str, Any]:
    """The JSON Schema of documents whose "schema" is `schema_id`; KeyError if tuner has none."""
    name = file_name(schema_id)
    if name not in _files():
        raise KeyError(f"no JSON Schema for {schema_id!r} in {SCHEMA_DIR}")
    return _read(name)


def ids() -> List[str]:
    """Every schema id tuner documents, in file order."""
    return [_read(name)["properties"]["schema"]["const"] for name in _files()]


def common() -> Dict[str, Any]:
    return _read(COMMON)


def validate(document: Dict[str, Any]) -> None:
    """Check `document` against the schema its "schema" key names; raises
    jsonschema.ValidationError (or KeyError for an unknown schema)."""
    # Here: jsonschema loads only when a document is validated (start-up time).
    import jsonschema
    from referencing import Registry, Resource

    schema = load(document["schema"])
    registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in [common()] + [load(i) for i in ids()])
    jsonschema.Draft202012Validator(schema, registry=registry,
                                    format_checker=jsonschema.FormatChecker()).validate(document)


# ---------------------------------------------------------------- docs/json.md

def _by_id(uri: str) -> Dict[str, Any]:
    return next(doc for doc in [common()] + [load(i) for i in ids()] if doc["$id"] == uri)


def _resolve(node: Dict[str, Any], root: Dict[str, Any]) -> Dict[str, Any]:
    """Inline one level of $ref, allOf[$ref] or anyOf[null, object] (local "#/$defs/x",
    or another file's by its $id), keeping the referring node's description."""
    options = node.get("anyOf") or []
    if options and not node.get("type"):
        objects = [o for o in options if o.get("type") != "null"]
        if len(objects) == 1:
            merged = {**objects[0], "description": node.get("description", "")}
            merged["type"] = [objects[0].get("type", "object"), "null"]
            return merged
    target = node.get("$ref") or (node.get("allOf") or [{}])[0].get("$ref")
    if not target:
        return node
    base, _, pointer = target.partition("#")
    doc = _by_id(base) if base else root
    for part in pointer.strip("/").split("/") if pointer else []:
        doc = doc[part]
    return {**doc, "description": node.get("description", doc.get("description", ""))}


def _type(node: Dict[str, Any]) -> str:
    if "const" in node:
        return json.dumps(node["const"])
    t = node.get("type", "any")
    types = t if isinstance(t, list) else [t]
    if "array" in types and "items" in node:
        items = node["items"]
        inner = items.get("type", "object" if "properties" in items or "$ref" in items else "any")
        inner = "/".join(inner) if isinstance(inner, list) else inner
        types = [f"list of {inner}" if x == "array" else x for x in types]
    return types[0] if len(types) == 1 else ", ".join(types[:-1]) + " or " + types[-1]


def _document_ref(node: Dict[str, Any]) -> str:
    """The schema id a node refers to when it embeds another document ("tuner.plan/2")."""
    target = node.get("$ref", "")
    if not target.startswith("urn:tuner:schema:") or "#" in target or target == common()["$id"]:
        return ""
    return _by_id(target)["properties"]["schema"]["const"]


def _rows(props: Dict[str, Any], required: List[str], root: Dict[str, Any], prefix: str = "",
          when: str = "") -> List[str]:
    out = []
    for key, node in props.items():
        embedded = _document_ref(node)
        if embedded:
            out.append(f"| `{prefix + key}` | object | {node.get('description', '')} See `{embedded}`. |")
            continue
        node = _resolve(node, root)
        name = prefix + key
        desc = " ".join(node.get("description", "").split())
        if "enum" in node:
            desc += " One of: " + ", ".join(f"`{v}`" for v in node["enum"]) + "."
        opt = when or ("" if key in required else " (optional)")
        out.append(f"| `{name}` | {_type(node)}{opt} | {desc} |")
        sub = node
        if node.get("type") == "array" or (isinstance(node.get("type"), list) and "array" in node["type"]):
            sub = _resolve(node.get("items", {}), root)
            name += "[]"
        if "properties" in sub:
            out += _rows(sub["properties"], sub.get("required", []), root, name + ".", when)
    return out


# The order docs/json.md presents them in; schemas not named here follow, by name.
DOC_ORDER = ["tuner.report", "tuner.apply", "tuner.plan", "tuner.revert", "tuner.journal", "tuner.probe",
             "tuner.probe.serve", "tuner.probe.connect"]


def _doc_order(schema_id: str):
    """DOC_ORDER, then by name; the newest version of one name first."""
    name, _, version = schema_id.partition("/")
    return (DOC_ORDER.index(name) if name in DOC_ORDER else len(DOC_ORDER), name, -int(version))


def markdown() -> str:
    """docs/json.md: every schema's keys, types and meanings, from the schema files."""
    lines = [
        "# JSON output",
        "",
        "<!-- Generated from tuner/schemas/*.json by `python -m tuner.schemas docs/json.md`;",
        "     edit the schema files, not this page (tests/test_schemas.py checks it is current). -->",
        "",
        "Every command that prints a table prints the same data with `--json`: one JSON object",
        "on stdout whose `schema` key names its schema and version (`tuner.report/3`). The",
        "JSON Schema (draft 2020-12) of each ships inside the package, in `tuner/schemas/`",
        "(`tuner.report/3` is `tuner.report-3.json`); `tuner.schemas.validate(doc)` checks a",
        "document when the `jsonschema` package is installed:",
        "",
        "```python",
        "import json, subprocess, tuner.schemas",
        "doc = json.loads(subprocess.run(['tuner', 'report', '--json'], capture_output=True, text=True).stdout)",
        "tuner.schemas.validate(doc)",
        "```",
        "",
        "Rules: new keys may be added to a schema version; an existing key keeps its type and",
        "meaning within a version, and a change to either is a new version. Numbers are raw",
        "(bytes in bytes, counts as integers, seconds as decimals); the tables format them for",
        "people.",
        "",
        "Values: " + " ".join(common()["$defs"]["values"]["description"].split()) + " A key that",
        "holds a value has that type in every document (`current` in the report, the plan and",
        "revert alike); the schemas check each setting kind's form.",
        "",
    ]
    for sid in sorted(ids(), key=_doc_order):
        schema = load(sid)
        lines += [f"## `{sid}`: {schema['title']}", "", " ".join(schema["description"].split()), ""]
        if "x-changes" in schema:
            lines += ["**Changed** " + " ".join(schema["x-changes"].split()), ""]
        lines += ["| key | type | meaning |", "|---|---|---|"]
        lines += _rows(schema["properties"], schema.get("required", []), schema)
        # An if/then/else on one boolean key (the probe's "refused"): its rows say when.
        cond = next(iter(schema.get("if", {}).get("properties", {}).items()), None)
        if cond:
            key, test = cond
            then, other = schema.get("then", {}), _resolve(schema.get("else", {}), schema)
            lines += _rows(then.get("properties", {}), [], schema, when=f" (when {key} is {json.dumps(test['const'])})")
            lines += _rows(other.get("properties", {}), [], schema, when=f" (when {key} is not {json.dumps(test['const'])})")
        lines.append("")
    return "\n".join(lines)



def protocol_enum() -> List[str]:
    """The schemes `tuner probe --connect` speaks, from the protocol registry: the enum
    of tuner.probe.connect's `protocol` (write_docs keeps the file in step)."""
    # Imported here: loading and validating schemas needs no probe module.
    from probes import protocols

    return [s.name for s in protocols.schemes()]


CONNECT_FILE = "tuner.probe.connect-3.json"


def sync_protocols() -> None:
    """Rewrite the connect schema's protocol enum from the registry (the file stays as
    json.dumps writes it)."""
    doc = _read(CONNECT_FILE)
    if doc["properties"]["protocol"]["enum"] == protocol_enum():
        return
    doc["properties"]["protocol"]["enum"] = protocol_enum()
    with open(os.path.join(SCHEMA_DIR, CONNECT_FILE), "w") as f:
        f.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def write_docs(target: str) -> None:
    sync_protocols()
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with open(target, "w") as f:
        f.write(markdown())
