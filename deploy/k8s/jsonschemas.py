"""JSON Schemas for kubeconform, made offline from the Kubernetes OpenAPI spec and CRDs.

kubeconform looks a resource's schema up by file name, ``{kind}-{group}-{version}.json``
(``deploy/k8s/validate.sh`` passes the template). This writes one such file per kind:

- ``kubernetes SWAGGER OUT``: the Kubernetes API's OpenAPI v2 spec
  (``api/openapi-spec/swagger.json`` of the k8s.io/kubernetes module); every definition
  that names a group-version-kind becomes a standalone schema, the definitions it
  references carried along under ``definitions`` (so recursive types need no inlining).
- ``crds OUT CRD.json...``: CustomResourceDefinitions as JSON; each served version's
  ``openAPIV3Schema`` becomes a schema.

Both are made strict the way the API server is: an object with listed properties takes no
others (``additionalProperties: false``, except where the schema says
``x-kubernetes-preserve-unknown-fields``), ``apiVersion`` and ``kind`` must name the
resource, an int-or-string field takes either, and a quantity takes a string or a number.
Standard library only: ``deploy/stack.sh install`` runs it before the virtualenv exists.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
GVK = "x-kubernetes-group-version-kind"
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def schema_name(kind: str, group: str, version: str) -> str:
    """The file name kubeconform asks for: its ``{{.ResourceKind}}{{.KindSuffix}}.json``.

    The suffix takes only the group's first label, as kubeconform does.

    >>> schema_name("StatefulSet", "apps", "v1")
    'statefulset-apps-v1.json'
    >>> schema_name("ConfigMap", "", "v1")
    'configmap-v1.json'
    >>> schema_name("ServiceMonitor", "monitoring.coreos.com", "v1")
    'servicemonitor-monitoring-v1.json'
    """
    suffix = f"-{group.split('.')[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def strict(schema: Any) -> Any:
    """A copy of ``schema`` where every object with listed properties takes no others.

    Walks subschemas only (never a ``properties`` map itself, whose keys are field names).

    >>> strict({"type": "object", "properties": {"a": {"properties": {}}}})
    {'type': 'object', 'properties': {'a': {'properties': {}, 'additionalProperties': False}}, \
'additionalProperties': False}
    >>> strict({"properties": {}, "x-kubernetes-preserve-unknown-fields": True})
    {'properties': {}, 'x-kubernetes-preserve-unknown-fields': True}
    >>> strict({"format": "int-or-string", "type": "string"})
    {'oneOf': [{'type': 'string'}, {'type': 'integer'}]}
    """
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(PRESERVE_UNKNOWN):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [strict(sub) for sub in out[key]]
    return out


def pin_resource(schema: Schema, gvks: Iterable[tuple[str, str, str]]) -> Schema:
    """``schema`` with ``apiVersion`` and ``kind`` restricted to the given (group, version, kind)s."""
    gvks = list(gvks)
    out = dict(schema)
    properties = dict(out.get("properties", {}))
    api_versions = sorted({f"{g}/{v}" if g else v for g, v, _ in gvks})
    properties["apiVersion"] = {**properties.get("apiVersion", {"type": "string"}), "enum": api_versions}
    properties["kind"] = {**properties.get("kind", {"type": "string"}), "enum": sorted({k for _, _, k in gvks})}
    out["properties"] = properties
    return out


def _refs(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            yield ref.removeprefix("#/definitions/")
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def _closure(definitions: dict[str, Schema], root: str) -> list[str]:
    """Names of the definitions ``root`` references, directly or not."""
    seen: set[str] = set()
    pending = list(_refs(definitions[root]))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_refs(definitions[name]))
    return sorted(seen)


def kubernetes_schemas(spec: Schema) -> dict[str, Schema]:
    """File name -> standalone strict schema, for every kind in an OpenAPI v2 spec."""
    definitions = {name: strict(d) for name, d in spec["definitions"].items()}
    if QUANTITY in definitions:
        description = definitions[QUANTITY].get("description", "")
        definitions[QUANTITY] = {"description": description, "oneOf": [{"type": "string"}, {"type": "number"}]}
    out: dict[str, Schema] = {}
    for name, definition in sorted(definitions.items()):
        gvks = [(g["group"], g["version"], g["kind"]) for g in spec["definitions"][name].get(GVK, [])]
        if not gvks or "properties" not in definition:
            continue
        schema = pin_resource(definition, gvks)
        needed = _closure(definitions, name)
        if needed:
            schema["definitions"] = {ref: definitions[ref] for ref in needed}
        for group, version, kind in gvks:
            out.setdefault(schema_name(kind, group, version), schema)
    return out


def crd_schemas(crd: Schema) -> dict[str, Schema]:
    """File name -> strict schema, for every served version of one CustomResourceDefinition."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not a CustomResourceDefinition: kind {crd.get('kind')!r}")
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    out: dict[str, Schema] = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        out[schema_name(kind, group, version["name"])] = pin_resource(schema, [(group, version["name"], kind)])
    return out


def write(schemas: dict[str, Schema], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        (out / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    usage = "usage: jsonschemas.py kubernetes SWAGGER.json OUT | crds OUT CRD.json..."
    if len(argv) >= 3 and argv[0] == "kubernetes" and len(argv) == 3:
        schemas = kubernetes_schemas(json.loads(Path(argv[1]).read_text()))
        out = Path(argv[2])
    elif len(argv) >= 3 and argv[0] == "crds":
        schemas = {}
        for path in argv[2:]:
            schemas.update(crd_schemas(json.loads(Path(path).read_text())))
        out = Path(argv[1])
    else:
        print(usage, file=sys.stderr)
        return 2
    write(schemas, out)
    print(f"jsonschemas: {len(schemas)} schemas in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
