"""deploy/kubernetes, checked without a cluster (there is none here): each overlay rendered
by `kubectl kustomize`, every built-in object validated against the Kubernetes API schemas
(kubernetes-validate, strict), and the references between objects, the security settings,
the RBAC the steps' Kubernetes calls need and every container's LAMINAR_* settings checked.
Objects of operator CRDs are not in those schemas: the ServiceMonitor is validated against its
CRD's schema in test_crd_schemas.py; FlinkDeployment and FlinkSessionJob have no schema in any
package (tests/deploy/data/README.md) and get the structural and cross-reference checks below."""

from __future__ import annotations

import inspect
import re
from typing import Any

import kubernetes_validate
import pytest

from steps.kubernetes_job import KubernetesApi
from tests.deploy.files import (
    OVERLAYS,
    REPO,
    by_kind,
    check_laminar_env,
    container_env,
    dockerfile_stages,
    image_env,
    kubectl,
    laminar_command,
    pod_specs,
    render_overlay,
)

pytestmark = pytest.mark.skipif(
    kubectl() is None, reason="kubectl (with its built-in kustomize) is not installed"
)
K8S_VERSION = "1.30"  # the oldest Kubernetes these manifests are meant for
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("flink.apache.org/v1beta1", "FlinkDeployment"),
    ("flink.apache.org/v1beta1", "FlinkSessionJob"),
}


def _readme_secret_keys() -> dict[str, set[str]]:
    """The Secret prod takes from outside the repository, with the keys the README's
    `kubectl create secret generic` command gives it."""
    readme = (REPO / "README.md").read_text()
    command = re.search(r"create secret generic (\S+)((?:[^\n]*\\\n)*[^\n]*)", readme)
    assert command, "README.md: no `kubectl create secret generic` command for prod"
    return {command[1]: set(re.findall(r"--from-literal=([\w.-]+)=", command[2]))}


EXTERNAL_SECRETS = _readme_secret_keys()
_RENDERS: dict[str, list[dict[str, Any]]] = {}


def rendered(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _RENDERS:
        _RENDERS[overlay] = render_overlay(overlay)
    return _RENDERS[overlay]


def schema_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path))
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{obj['apiVersion']} {obj['kind']}: no schema (a CRD not listed?)")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_matches_the_kubernetes_schemas(overlay: str) -> None:
    assert schema_problems(rendered(overlay)) == []


def test_the_schema_check_catches_a_broken_manifest() -> None:
    import copy

    objects = copy.deepcopy(rendered("dev"))
    # One mistake in each of two objects: a misspelt field (strict), a wrong type.
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resourcess"] = {}
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplicas"] = "ten"
    problems = schema_problems(objects)
    assert len(problems) == 2, problems
    assert "resourcess" in problems[0] or "resourcess" in problems[1], problems


def test_the_platform_objects_are_all_there() -> None:
    for overlay in OVERLAYS:
        kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered(overlay)}
        for wanted in [
            ("Deployment", "laminar-server"),
            ("Deployment", "laminar-worker"),
            ("Deployment", "laminar-relay"),
            ("Service", "laminar-server"),
            ("Job", "laminar-db-upgrade"),
            ("HorizontalPodAutoscaler", "laminar-worker"),
            ("PodDisruptionBudget", "laminar-server"),
            ("PodDisruptionBudget", "laminar-worker"),
            ("ServiceAccount", "laminar-spark-driver"),
            ("Role", "laminar-worker"),
            ("Role", "laminar-spark-driver"),
        ]:
            assert wanted in kinds, (overlay, wanted)
        assert any(kind == "NetworkPolicy" for kind, _ in kinds), overlay
    prod = {(o["kind"], o["metadata"]["name"]) for o in rendered("prod")}
    assert {"ServiceMonitor", "FlinkDeployment", "FlinkSessionJob"} <= {k for k, _ in prod}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_restricted(overlay: str) -> None:
    for where, spec in pod_specs(rendered(overlay)):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        # The image's user, so files the image owns stay readable.
        image_uid = dockerfile_stages()["laminar"].instructions
        uid = next(rest for kw, rest in reversed(image_uid) if kw == "USER").split(":")[0]
        assert str(pod.get("runAsUser")) == uid, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            name = f"{where} {container['name']}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
            assert "memory" in resources.get("limits", {}), name
            # A read-only root: /tmp must be a volume.
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_between_objects_resolve(overlay: str) -> None:
    objects = rendered(overlay)
    accounts = by_kind(objects, "ServiceAccount")
    roles = by_kind(objects, "Role")
    deployments = by_kind(objects, "Deployment")
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    for where, spec in pod_specs(objects):
        assert spec.get("serviceAccountName") in accounts, where
    for binding in by_kind(objects, "RoleBinding").values():
        assert binding["roleRef"]["name"] in roles, binding["metadata"]["name"]
        for subject in binding["subjects"]:
            assert subject["name"] in accounts, subject
            assert subject["namespace"] == namespace, subject
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]

    def selects(selector: dict[str, str]) -> list[str]:
        return [
            name
            for name, d in deployments.items()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    for service in by_kind(objects, "Service").values():
        targets = selects(service["spec"]["selector"])
        assert targets, service["metadata"]["name"]
        ports = {
            p["name"]
            for d in targets
            for c in deployments[d]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)
    for budget in by_kind(objects, "PodDisruptionBudget").values():
        assert selects(budget["spec"]["selector"]["matchLabels"]), budget["metadata"]["name"]
    for hpa in by_kind(objects, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, target
        container = deployments[target]["spec"]["template"]["spec"]["containers"][0]
        assert "cpu" in container["resources"]["requests"]  # CPU utilisation needs a request
    for policy in by_kind(objects, "NetworkPolicy").values():
        labels = policy["spec"]["podSelector"]["matchLabels"]
        assert selects(labels), policy["metadata"]["name"]


def _kubernetes_calls() -> set[tuple[str, str]]:
    """(resource, verb) of every call the `runner: kubernetes` executor makes."""
    verbs = {
        "create": "create",
        "read": "get",
        "list": "list",
        "delete": "delete",
        "patch": "patch",
        "delete_collection": "deletecollection",
    }
    calls = set()
    for name, _ in inspect.getmembers(KubernetesApi, inspect.isfunction):
        match = re.fullmatch(
            r"(create|read|list|delete_collection|delete|patch)_namespaced_([a-z_]+?)"
            r"(_status|_log)?",
            name,
        )
        if match is None:
            continue
        kind = match[2].replace("_", "")
        resource = {"configmap": "configmaps", "job": "jobs", "pod": "pods", "secret": "secrets"}[
            kind
        ]
        sub = {"_status": "/status", "_log": "/log", None: ""}[match[3]]
        calls.add((resource + sub, verbs[match[1]]))
    assert len(calls) >= 12
    return calls


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_may_make_every_kubernetes_call_its_steps_make(overlay: str) -> None:
    objects = rendered(overlay)
    role = by_kind(objects, "Role")["laminar-worker"]
    allowed = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    missing = _kubernetes_calls() - allowed
    assert not missing, f"the worker's Role lacks {sorted(missing)}"
    # It writes Secrets for its steps but never reads one (a list would return their values).
    assert not {("secrets", v) for v in ("get", "list", "watch")} & allowed
    # spark-submit --master k8s:// (cluster mode) creates and watches the driver pod and the
    # ConfigMap and Service it needs; the driver then manages its executors.
    assert {
        ("pods", "create"),
        ("pods", "watch"),
        ("configmaps", "create"),
        ("services", "create"),
    } <= allowed
    driver = {
        (resource, verb)
        for rule in by_kind(objects, "Role")["laminar-spark-driver"]["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {
        ("pods", "create"),
        ("pods", "delete"),
        ("services", "create"),
        ("configmaps", "create"),
    } <= driver


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_laminar_with_every_setting_they_need(overlay: str) -> None:
    objects = rendered(overlay)
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    accounts = by_kind(objects, "ServiceAccount")
    checked = set()
    for where, spec in pod_specs(objects):
        for container in spec.get("initContainers", []) + spec["containers"]:
            target = container["image"].rsplit("/", 1)[-1].split(":")[0]
            assert target in dockerfile_stages(), f"{where}: image of no Dockerfile target"
            command = laminar_command(container["args"])
            env = {
                **image_env(dockerfile_stages(), target),
                **container_env(container, objects, EXTERNAL_SECRETS),
            }
            check_laminar_env(command, env, f"{overlay} {where} {container['name']}")
            checked.add(command)
            if command == "worker":
                # Steps' pods and Jobs go to this namespace, under accounts that exist.
                assert env["LAMINAR_KUBERNETES__NAMESPACE"] == namespace
                assert env["LAMINAR_KUBERNETES__SERVICE_ACCOUNT"] in accounts
                if env.get("LAMINAR_SPARK__MASTER", "").startswith("k8s://"):
                    assert env["LAMINAR_SPARK__KUBERNETES__NAMESPACE"] == namespace
                    assert env["LAMINAR_SPARK__KUBERNETES__SERVICE_ACCOUNT"] in accounts
                    assert "laminar-compute" in env["LAMINAR_SPARK__KUBERNETES__IMAGE"]
    assert checked == {"server", "worker", "events relay", "db upgrade", "db check"}


def test_prod_runs_spark_on_kubernetes_and_flink_on_the_operator_session() -> None:
    objects = rendered("prod")
    worker = by_kind(objects, "Deployment")["laminar-worker"]["spec"]["template"]["spec"]
    env = container_env(worker["containers"][0], objects, EXTERNAL_SECRETS)
    assert env["LAMINAR_SPARK__MASTER"].startswith("k8s://https://")
    sessions = by_kind(objects, "FlinkDeployment")
    assert env["LAMINAR_FLINK__REST_URL"] in {f"http://{name}-rest:8081" for name in sessions}
    makefile = (REPO / "Makefile").read_text()
    version = re.search(r"^FLINK_VERSION := (\S+)", makefile, re.M)
    assert version is not None
    accounts = by_kind(objects, "ServiceAccount")
    for name, session in sessions.items():
        spec = session["spec"]
        assert spec["image"].startswith(f"flink:{version[1]}-"), name
        major, minor = version[1].split(".")[:2]
        assert spec["flinkVersion"] == f"v{major}_{minor}", name
        assert spec["serviceAccount"] in accounts, name
        assert "job" not in spec, f"{name} is a session cluster: Laminar submits the jobs"
    for job in by_kind(objects, "FlinkSessionJob").values():
        assert job["spec"]["deploymentName"] in sessions
        assert job["spec"]["job"]["jarURI"]


def test_prod_service_monitor_scrapes_named_metrics_ports() -> None:
    objects = rendered("prod")
    monitor = by_kind(objects, "ServiceMonitor")["laminar"]
    selected = monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    services = [
        s
        for s in by_kind(objects, "Service").values()
        if s["metadata"]["labels"].get("app.kubernetes.io/name") in selected
    ]
    named = {p["name"] for s in services for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= named
    covered = {s["metadata"]["labels"]["app.kubernetes.io/name"] for s in services}
    assert covered == {"laminar-server", "laminar-worker", "laminar-relay"}
