"""Operator objects against their CRD's schema, offline: the ServiceMonitor of the `monitoring`
component against the prometheus-operator ServiceMonitor schema vendored in
tests/deploy/data/ (provenance in its README). No package on PyPI or npm ships the Flink
Kubernetes Operator's CRDs (what was checked is in the same README), so FlinkDeployment and
FlinkSessionJob keep the structural checks of test_kubernetes.py only.

The vendored schema is the CRD's OpenAPI v3 schema as the API server reads it. Two readings are
added here, as `kubectl apply --validate=strict` applies them: a field the schema does not
declare is an error (not silently pruned), and `nullable: true` admits null. Metadata is
checked against the Kubernetes ObjectMeta schema by kubernetes-validate (the CRD schema refers
to it by name)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.files import by_kind, kubectl, render_overlay

pytestmark = pytest.mark.skipif(
    kubectl() is None, reason="kubectl (with its built-in kustomize) is not installed"
)
DATA = Path(__file__).parent / "data"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused and `nullable` honoured (see the docstring)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("$ref") == OBJECT_META:
        return {"type": "object"}  # checked by kubernetes-validate, see metadata_problems
    out = {key: strict(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


SERVICE_MONITOR = strict(json.loads((DATA / "servicemonitor-v1.schema.json").read_text()))


def metadata_problems(obj: dict[str, Any]) -> list[str]:
    """ObjectMeta through the Kubernetes schemas (carried by a ConfigMap, whose own fields are
    all optional)."""
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    try:
        kubernetes_validate.validate(carrier, "1.30", strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"metadata/{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


def service_monitor_problems(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SERVICE_MONITOR)
    problems = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
    return problems + metadata_problems(obj)


def service_monitor() -> dict[str, Any]:
    return by_kind(render_overlay("prod"), "ServiceMonitor")["laminar"]


def test_the_vendored_schema_is_the_service_monitor_crd() -> None:
    properties = SERVICE_MONITOR["properties"]
    assert properties["apiVersion"]["enum"] == ["monitoring.coreos.com/v1"]
    assert properties["kind"]["enum"] == ["ServiceMonitor"]
    assert {"endpoints", "selector"} <= set(properties["spec"]["required"])
    jsonschema.Draft7Validator.check_schema(SERVICE_MONITOR)


def test_the_service_monitor_matches_its_crd_schema() -> None:
    assert service_monitor_problems(service_monitor()) == []


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda m: m["spec"]["endpoints"][0].update(intervall="30s"), "intervall"),
        (lambda m: m["spec"]["endpoints"][0].update(interval=30), "30 is not of type"),
        (lambda m: m["spec"].pop("selector"), "'selector' is a required property"),
        (lambda m: m["spec"].update(endpoints="http"), "'http' is not of type 'array'"),
        (lambda m: m["metadata"].update(labels={"release": 1}), "metadata/labels/release"),
    ],
    ids=["misspelt-field", "wrong-type", "missing-required", "not-a-list", "bad-metadata"],
)
def test_the_crd_check_catches_a_broken_service_monitor(breakage: Any, expected: str) -> None:
    broken = copy.deepcopy(service_monitor())
    breakage(broken)
    problems = service_monitor_problems(broken)
    assert problems and any(expected in p for p in problems), problems
