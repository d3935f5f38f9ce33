"""deploy/k8s, deploy/kserve and deploy/cloudrun, checked offline.

- The kustomize base and both overlays are rendered with `kubectl kustomize` (or a
  standalone `kustomize`), and every object of a core kind is validated against the
  Kubernetes OpenAPI schemas bundled in the PyPI package kubernetes-validate, in strict mode
  (an unknown field fails). Without a renderer, the base files are validated one by one and
  the overlay tests skip with the reason.
- The custom resources (ServiceMonitor, KServe's InferenceService, Knative's/Cloud Run's
  Service) have no core schema: their structure is checked here (apiVersion, kind, the
  fields their controllers require, ports, probe paths), and the pod spec inside the
  InferenceService and the Cloud Run Service is validated strictly as a core Pod.
- The wiring between objects: selectors match the pod labels, the HPA and the ServiceMonitor
  point at what exists, every SHIPYARD_SERVE_* variable is a real server setting, and no
  secret value is written anywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.serve.settings import ADMIN_TOKEN_ENV, ENV_PREFIX, ServeSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "prod")
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
CLOUDRUN = ROOT / "deploy" / "cloudrun" / "service.yaml"
K8S_VERSION = "1.37.0"  # the newest schema set kubernetes-validate 1.37 bundles
PORT = 8000
READY, LIVE = "/v2/health/ready", "/v2/health/live"
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("serving.knative.dev/v1", "Service"),
}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|(^|_)KEY$", re.IGNORECASE)
Doc = dict[str, Any]


# -- tools ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv() -> Any:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed: pip install -c constraints.txt "
        "kubernetes-validate (it bundles the Kubernetes JSON schemas)",
    )


def _renderer() -> list[str] | None:
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    return None


@pytest.fixture(scope="module")
def render() -> Any:
    command = _renderer()
    if command is None:
        pytest.skip(
            "no kustomize renderer: install kubectl (it embeds kustomize) or kustomize; "
            "the base files are still validated one by one"
        )
    cache: dict[Path, list[Doc]] = {}

    def run(path: Path) -> list[Doc]:
        if path not in cache:
            done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            cache[path] = [d for d in yaml.safe_load_all(done.stdout) if d]
        return cache[path]

    return run


def validate_strict(kv: Any, doc: Doc) -> None:
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as error:
        where = "/".join(map(str, error.path))
        pytest.fail(f"{doc['kind']}/{doc['metadata'].get('name')}: {where}: {error.message}")


def by_kind(docs: list[Doc]) -> dict[str, Doc]:
    found: dict[str, Doc] = {}
    for doc in docs:
        assert doc["kind"] not in found, f"two objects of kind {doc['kind']}"
        found[doc["kind"]] = doc
    return found


def load(path: Path) -> Doc:
    doc: Doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


# -- schema validation ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_rendered_objects_pass_strict_schema(kv: Any, render: Any, target: str) -> None:
    docs = render(BASE if target == "base" else K8S / "overlays" / target)
    kinds = {doc["kind"] for doc in docs}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue  # no core schema: checked structurally below
        validate_strict(kv, doc)


def test_base_files_pass_strict_schema_one_by_one(kv: Any) -> None:
    """What is checked without a renderer too: each base resource file on its own."""
    listed = load(BASE / "kustomization.yaml")["resources"]
    assert sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml") == sorted(
        listed
    )
    for name in listed:
        doc = load(BASE / name)
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            validate_strict(kv, doc)


def test_strict_validation_catches_a_typo(kv: Any) -> None:
    """The validator really is strict: a misspelt field fails."""
    doc = load(BASE / "deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


def pod_from(containers: list[Doc], spec: Doc) -> Doc:
    pod_spec = {"containers": containers}
    for key in ("volumes", "securityContext"):
        if key in spec:
            pod_spec[key] = spec[key]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_spec}


def test_inferenceservice_pod_spec_passes_strict_schema(kv: Any) -> None:
    predictor = load(KSERVE)["spec"]["predictor"]
    validate_strict(kv, pod_from(predictor["containers"], predictor))


def test_cloudrun_pod_spec_passes_strict_schema(kv: Any) -> None:
    spec = load(CLOUDRUN)["spec"]["template"]["spec"]
    validate_strict(kv, pod_from(spec["containers"], spec))


# -- the base: what each object must say -----------------------------------------------------


@pytest.fixture(scope="module")
def base() -> dict[str, Doc]:
    return by_kind([load(BASE / name) for name in load(BASE / "kustomization.yaml")["resources"]])


def container_of(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def assert_probes(container: Doc, port: int | str, *, readiness: bool = True) -> None:
    probes = {"startupProbe": READY, "livenessProbe": LIVE}
    if readiness:
        probes["readinessProbe"] = READY
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, port), probe


def assert_env(container: Doc) -> None:
    env = {item["name"]: item for item in container["env"]}
    fields = set(ServeSettings.model_fields)
    for name, item in env.items():
        if name.startswith(ENV_PREFIX):
            assert name.removeprefix(ENV_PREFIX).lower() in fields, f"{name}: no such setting"
            assert "value" in item, name
        if SECRET_NAME.search(name):
            assert "value" not in item, f"{name} has a value written in the manifest"
    assert env[f"{ENV_PREFIX}PORT"]["value"] == str(PORT)
    assert env[f"{ENV_PREFIX}HOST"]["value"] == "0.0.0.0"
    assert "secretKeyRef" in env[ADMIN_TOKEN_ENV]["valueFrom"]


def test_deployment(base: dict[str, Doc]) -> None:
    deployment = base["Deployment"]
    pod = deployment["spec"]["template"]
    container = container_of(deployment)
    assert container["image"] == "shipyard-serve"  # the tag comes from kustomize `images`
    assert container["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    assert_probes(container, "http")
    assert_env(container)
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    # non-root, read-only root filesystem, writable home and /tmp from emptyDirs
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    home = {e["name"]: e.get("value") for e in container["env"]}[f"{ENV_PREFIX}HOME"]
    for path in (home, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_wiring(base: dict[str, Doc]) -> None:
    deployment, service = base["Deployment"], base["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(base["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["ports"][0]["port"] == PORT

    target = base["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = base["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"

    monitor = base["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


def test_no_secret_objects_or_values() -> None:
    for path in [*K8S.rglob("*.yaml"), KSERVE, CLOUDRUN]:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc.get("kind") != "Secret", f"{path}: a Secret is committed"
            text = yaml.safe_dump(doc)
            assert "stringData" not in text, path
            assert "BEGIN " not in text, path


# -- overlays --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_its_changes(render: Any, overlay: str) -> None:
    base = by_kind(render(BASE))
    docs = by_kind(render(K8S / "overlays" / overlay))
    kustomization = load(K8S / "overlays" / overlay / "kustomization.yaml")
    namespace = kustomization["namespace"]
    assert all(doc["metadata"]["namespace"] == namespace for doc in docs.values())
    (image,) = kustomization["images"]
    container = container_of(docs["Deployment"])
    name = image.get("newName", "shipyard-serve")
    assert container["image"] == f"{name}:{image['newTag']}"
    assert container_of(base["Deployment"])["image"] == "shipyard-serve:latest"
    patch = load(K8S / "overlays" / overlay / "deployment-patch.yaml")
    assert docs["Deployment"]["spec"]["replicas"] == patch["spec"]["replicas"]
    patched = patch["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert container["resources"] == patched
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] <= docs["Deployment"]["spec"]["replicas"] <= hpa["maxReplicas"]
    # the probes, security and secret reference survive the patch
    assert_probes(container, "http")
    assert_env(container)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_prod_is_bigger_than_dev(render: Any) -> None:
    dev, prod = (by_kind(render(K8S / "overlays" / o)) for o in OVERLAYS)
    assert prod["Deployment"]["spec"]["replicas"] > dev["Deployment"]["spec"]["replicas"]
    assert (
        prod["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]
        > dev["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]
    )


# -- KServe and Cloud Run (custom resources: structure) --------------------------------------


def test_inferenceservice() -> None:
    doc = load(KSERVE)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert doc["metadata"]["name"]
    predictor = doc["spec"]["predictor"]
    # a custom predictor: containers, and no framework block (sklearn, onnx, model, ...)
    assert set(predictor) & {"sklearn", "onnx", "model", "triton", "pytorch"} == set()
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    (port,) = container["ports"]
    assert port["containerPort"] == PORT
    assert port["name"] in {"http1", "h2c"}
    assert container["readinessProbe"]["httpGet"]["path"] == READY
    assert container["livenessProbe"]["httpGet"]["path"] == LIVE
    assert_env(container)
    assert predictor["minReplicas"] <= predictor["maxReplicas"]


def test_cloudrun_service() -> None:
    doc = load(CLOUDRUN)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.knative.dev/v1", "Service")
    assert doc["metadata"]["name"]
    template = doc["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert int(annotations["autoscaling.knative.dev/minScale"]) <= int(
        annotations["autoscaling.knative.dev/maxScale"]
    )
    spec = template["spec"]
    (container,) = spec["containers"]  # Cloud Run: one serving container
    (port,) = container["ports"]  # Cloud Run: exactly one port, named http1 or h2c
    assert port == {"name": "http1", "containerPort": PORT}
    assert container["startupProbe"]["httpGet"] == {"path": READY, "port": PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": LIVE, "port": PORT}
    assert_env(container)
    token = {e["name"]: e for e in container["env"]}[ADMIN_TOKEN_ENV]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "latest"  # a Secret Manager version
    assert "limits" in container["resources"]
