"""What ships for deployment agrees with itself, the code and the README, checked offline.

No Docker engine and no Kubernetes cluster exist here, so the Dockerfile, docker-compose.yml,
deploy/kubernetes/, deploy/compose/, deploy/agent/ and deploy/systemd/ are read and cross-checked:
schemas (kubernetes-validate), `kubectl kustomize`, users, ports, paths, commands and environment
variables. Two tests run real pieces: the compose loop's seeder, agent and consumer on loopback
(a real OpenBao dev server and the emulator), and the wheel the Dockerfile builds, installed in a
fresh venv.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from vault_rotator.cli import build_parser
from vault_rotator.emulator import Emulator
from vault_rotator.testing.vault_server import bao_binary, bao_dev_server, stop_process

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
COMPOSE_DIR = REPO / "deploy" / "compose"
AGENT_TEMPLATE = REPO / "deploy" / "agent" / "arouter-api-key.ctmpl"
SYSTEMD = REPO / "deploy" / "systemd"
README = (REPO / "README.md").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONTROL_PORT, METRICS_PORT = 9780, 9781
# The README's "Environment variables" table is the contract. These three are decided (issue 12,
# item 2) and their README rows come with the code that reads them; until then they are allowed
# by name here. Drop this set once the README lists them.
DECIDED_NOT_YET_DOCUMENTED = {
    "VAULT_ROTATOR_METRICS_LISTEN",
    "VAULT_ROTATOR_TLS_CERT_FILE",
    "VAULT_ROTATOR_TLS_KEY_FILE",
}
OURS = re.compile(r"\b((?:VAULT|AROUTER)_[A-Z0-9_]+)\b")
CRD_KINDS = {"ServiceMonitor"}  # kubernetes-validate ships no CRD schemas: checked by hand
CLI = (sys.executable, "-m", "vault_rotator.cli")
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


# -- readers ------------------------------------------------------------------------------------


def documented_variables() -> set[str]:
    """Every VAULT_*/AROUTER_* name the README shows in backticks, plus the decided three."""
    return set(re.findall(r"`((?:VAULT|AROUTER)_[A-Z0-9_]+)`", README)) | DECIDED_NOT_YET_DOCUMENTED


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    """The instructions after the Dockerfile's last FROM: what the image is."""
    steps = dockerfile()
    last = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last:]


def image_env() -> dict[str, str]:
    """The final stage's ENV settings."""
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            env |= dict(part.split("=", 1) for part in shlex.split(args))
    return env


def image_user() -> tuple[int, int]:
    """The final stage's USER as numbers (uid, gid); a name fails the test."""
    (user,) = [args for keyword, args in final_stage() if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user} must be numeric uid:gid"
    assert gid.isdigit(), f"USER {user} must be numeric uid:gid"
    return int(uid), int(gid)


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under deploy/kubernetes (kustomization files excluded)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) for every object in the manifest files."""
    return [
        (path, doc)
        for path in manifest_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    """The single manifest of this kind (and name)."""
    (doc,) = [
        d for _, d in manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return doc


def rotator_container() -> dict[str, Any]:
    """The daemon's container in deploy/kubernetes/deployment.yaml."""
    container: dict[str, Any]
    (container,) = one("Deployment", "vault-rotator")["spec"]["template"]["spec"]["containers"]
    return container


def kustomize(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`, parsed; skipped when kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def port_of(address: str) -> int:
    """The port of HOST:PORT."""
    return int(address.rsplit(":", 1)[1])


def mounts(service: dict[str, Any], named: dict[str, Path]) -> dict[str, Path]:
    """A compose service's mounts: container path -> host path (named volumes from ``named``)."""
    out: dict[str, Path] = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = (REPO / source).resolve() if source.startswith(".") else named[source]
    return out


def host_path(container_path: str, table: dict[str, Path]) -> Path:
    """Where a container path lives on the host, through the longest mount that holds it."""
    for target in sorted(table, key=len, reverse=True):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return table[target] / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is on no mounted volume")


def cli_verbs() -> dict[str, argparse.ArgumentParser]:
    """The CLI's verbs and their parsers."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def policy_rules(hcl: str) -> dict[str, list[str]]:
    """A Vault policy's rules: path -> sorted capabilities."""
    found = re.findall(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}', hcl)
    return {path: sorted(re.findall(r'"([^"]+)"', caps)) for path, caps in found}


def template_body(text: str) -> str:
    """A consul-template template without its comments."""
    return re.sub(r"\{\{-? */\*.*?\*/ *-?\}\}", "", text, flags=re.DOTALL).strip()


# -- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_core_manifest_validates_against_the_kubernetes_schemas(
    path: Path, version: str
) -> None:
    """Each non-CRD object validates, strictly (no unknown field), on an old and the newest API."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The schema check has teeth: a misspelt probe field is refused, not ignored."""
    deployment = one("Deployment", "vault-rotator")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_the_servicemonitor_selects_the_service_and_scrapes_only_the_metrics_port() -> None:
    """The ServiceMonitor (no schema here) has Prometheus Operator's shape and our labels."""
    monitor, service = one("ServiceMonitor"), one("Service", "vault-rotator")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    by_name = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert by_name[endpoint["port"]] == METRICS_PORT
    assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "http")


def test_kustomize_renders_the_daemon_into_its_namespace() -> None:
    """`kubectl kustomize deploy/kubernetes` gives the core objects, namespaced and valid."""
    docs = kustomize(K8S)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap", "Deployment", "Namespace", "PodDisruptionBudget", "Service", "ServiceAccount"
    ]  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "vault-rotator"


def test_kustomize_renders_with_the_servicemonitor_component(tmp_path: Path) -> None:
    """The component, added as documented, adds a ServiceMonitor and stops annotation scraping."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text() + "\ncomponents:\n  - components/servicemonitor\n"
    )
    docs = {d["kind"]: d for d in kustomize(copy)}
    assert docs["ServiceMonitor"]["metadata"]["namespace"] == "vault-rotator"
    annotations = docs["Service"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"


def test_kustomize_renders_the_sample_consumer() -> None:
    """The sample consumer renders on its own (no namespace: it goes in the app's)."""
    docs = kustomize(K8S / "sample-consumer")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "ServiceAccount"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        assert "namespace" not in doc["metadata"]


def test_the_daemon_pod_runs_locked_down_as_the_image_user() -> None:
    """Pod and container security contexts are restricted and match the image's numeric USER."""
    deployment = one("Deployment", "vault-rotator")
    pod = deployment["spec"]["template"]["spec"]
    uid, gid = image_user()
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = rotator_container()
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp[0]["name"]]
    assert "emptyDir" in volume


def test_three_replicas_roll_one_at_a_time_spread_over_nodes_under_a_budget() -> None:
    """HA: 3 replicas, a rollout and a drain take at most one down, never two on one node."""
    deployment = one("Deployment", "vault-rotator")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    labels = spec["template"]["metadata"]["labels"]
    spread = spec["template"]["spec"]["topologySpreadConstraints"]
    hard = [c for c in spread if c["whenUnsatisfiable"] == "DoNotSchedule"]
    assert [c["topologyKey"] for c in hard] == ["kubernetes.io/hostname"]
    assert all(c["labelSelector"]["matchLabels"].items() <= labels.items() for c in spread)
    budget = one("PodDisruptionBudget", "vault-rotator")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_probes_ask_the_metrics_listener() -> None:
    """Liveness asks /healthz and readiness /readyz, on the metrics port, never the control one."""
    container = rotator_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == METRICS_PORT
        assert get.get("scheme", "HTTP") == "HTTP"


def test_the_daemon_logs_in_with_kubernetes_auth_and_serves_tls() -> None:
    """Vault Kubernetes auth env, the projected JWT, the policies and the TLS Secret are wired."""
    container = rotator_container()
    pod = one("Deployment", "vault-rotator")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VAULT_AUTH_METHOD"] == "kubernetes"
    assert env["VAULT_K8S_ROLE"]
    assert urlsplit(env["VAULT_ADDR"]).scheme == "https"
    assert pod["serviceAccountName"] == one("ServiceAccount", "vault-rotator")["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}

    def volume_of(path: str) -> dict[str, Any]:
        volume: dict[str, Any] = mounted[str(Path(path).parent)]
        return volume

    projected = volume_of(env["VAULT_K8S_JWT_FILE"])["projected"]["sources"][0]
    assert projected["serviceAccountToken"]["path"] == Path(env["VAULT_K8S_JWT_FILE"]).name
    assert mounted[env["VAULT_ROTATOR_CONFIG"]]["configMap"]["name"] == "vault-rotator-policies"
    assert env["VAULT_ROTATOR_CONFIG"] == image_env()["VAULT_ROTATOR_CONFIG"]
    for name in ("VAULT_ROTATOR_TLS_CERT_FILE", "VAULT_ROTATOR_TLS_KEY_FILE"):
        assert volume_of(env[name])["secret"]["secretName"] == "vault-rotator-tls"
    assert port_of(env["VAULT_ROTATOR_LISTEN"]) == CONTROL_PORT
    assert port_of(env["VAULT_ROTATOR_METRICS_LISTEN"]) == METRICS_PORT


def test_the_configmap_policies_validate(tmp_path: Path) -> None:
    """The example environment in the ConfigMap passes `vault-rotator validate`."""
    for name, text in one("ConfigMap", "vault-rotator-policies")["data"].items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        [*CLI, "validate", "--config", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" not in out.stdout + out.stderr


def test_the_sample_consumer_renders_the_api_key_field_of_its_secret() -> None:
    """The injector annotations render api_key with the shipped template, at a set interval."""
    pod = one("Deployment", "backend")["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    prefix = "vault.hashicorp.com/"
    assert notes[prefix + "agent-inject"] == "true"
    assert notes[prefix + "role"]
    assert notes[prefix + "agent-pre-populate-only"] == "false"
    assert re.fullmatch(r"\d+[smh]", notes[prefix + "template-static-secret-render-interval"])
    secret_path = notes[prefix + "agent-inject-secret-arouter-api-key"]
    template = notes[prefix + "agent-inject-template-arouter-api-key"]
    shipped = template_body(AGENT_TEMPLATE.read_text())
    shipped_path = re.search(r'secret "([^"]+)"', shipped)
    assert shipped_path is not None
    assert template.strip() == shipped.replace(shipped_path.group(1), secret_path)
    policies = yaml.safe_load(one("ConfigMap", "vault-rotator-policies")["data"]["production.yaml"])
    mount = policies["vault"]["kv_mount"]
    served = {f"{mount}/data/{key['secret_path']}" for key in policies["keys"]}
    assert secret_path in served


def test_the_sample_consumer_acknowledges_with_the_shipped_files() -> None:
    """The version template is the shipped one with the key's path, the app's helper is a copy
    of the shipped helper, and the ack path is the key's ack folder."""
    pod = one("Deployment", "backend")["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    prefix = "vault.hashicorp.com/agent-inject-"
    secret_path = notes[prefix + "secret-arouter-api-key.version"]
    shipped = template_body((AGENT_TEMPLATE.parent / "arouter-api-key-version.ctmpl").read_text())
    shipped_path = re.search(r'secret "([^"]+)"', shipped)
    assert shipped_path is not None
    template = notes[prefix + "template-arouter-api-key.version"]
    assert template.strip() == shipped.replace(shipped_path.group(1), secret_path)
    assert notes[prefix + "token"] == "true"
    copy = K8S / "sample-consumer" / "vault_rotator_ack.py"
    assert copy.read_text() == (AGENT_TEMPLATE.parent / "vault_rotator_ack.py").read_text()
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["VAULT_ROTATOR_ACK_PATH"] == "secret/data/vault-rotator/acks/production/backend"
    assert env["VAULT_ROTATOR_ACK_VERSION_FILE"] == "/vault/secrets/arouter-api-key.version"


# -- the image ------------------------------------------------------------------------------


def test_the_image_user_is_numeric_and_non_root() -> None:
    """USER is uid:gid in numbers (runAsNonRoot can verify it), not root, and is the pod's."""
    uid, gid = image_user()
    assert uid != 0
    assert gid != 0
    assert (
        one("Deployment", "vault-rotator")["spec"]["template"]["spec"]["securityContext"][
            "runAsUser"
        ]
        == uid
    )


def test_ports_agree_across_image_manifests_and_compose() -> None:
    """EXPOSE, containerPorts, Service ports, listener settings and compose ports are 9780/9781."""
    (exposed,) = [args for keyword, args in final_stage() if keyword == "EXPOSE"]
    ports = {int(p.split("/")[0]) for p in exposed.split()}
    assert ports == {CONTROL_PORT, METRICS_PORT}
    container = rotator_container()
    assert {p["containerPort"] for p in container["ports"]} == ports
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = one("Service", "vault-rotator")
    assert {p["port"] for p in service["spec"]["ports"]} == ports
    assert {by_name[p["targetPort"]] for p in service["spec"]["ports"]} == ports
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    env = image_env()
    assert port_of(env["VAULT_ROTATOR_LISTEN"]) == CONTROL_PORT
    assert port_of(env["VAULT_ROTATOR_METRICS_LISTEN"]) == METRICS_PORT
    rotator = SERVICES["rotator"]
    published = {int(spec.rsplit(":", 1)[1]) for spec in rotator["ports"]}
    assert published == ports
    command = rotator["command"]
    assert port_of(command[command.index("--listen") + 1]) == CONTROL_PORT
    assert port_of(command[command.index("--metrics-listen") + 1]) == METRICS_PORT


def test_the_healthcheck_needs_no_curl_and_asks_the_metrics_listener() -> None:
    """HEALTHCHECK runs Python (slim has no curl) against /healthz on the metrics port."""
    (check,) = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    assert "curl" not in check
    assert "wget" not in check
    assert f"http://127.0.0.1:{METRICS_PORT}/healthz" in check
    assert '["python", "-c",' in check


def test_the_image_bakes_in_no_policies_and_pins_its_base() -> None:
    """No COPY of config/ (policies are mounted), an exact base tag, and the CLI as entrypoint."""
    steps = dockerfile()
    copies = [args for keyword, args in steps if keyword == "COPY"]
    assert not any(re.search(r"\bconfig\b", c) for c in copies)
    (arg,) = [args for keyword, args in steps if keyword == "ARG" and "PYTHON_IMAGE" in args]
    base = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base)
    assert all(args == "${PYTHON_IMAGE}" or " AS " in args for k, args in steps if k == "FROM")
    assert dict(final_stage())["ENTRYPOINT"] == '["vault-rotator"]'
    assert image_env()["VAULT_ROTATOR_CONFIG"] == "/etc/vault-rotator"


def test_the_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    """.dockerignore is an allow-list: each COPY source is let in; .venv, config/, tests are not."""
    rules = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = [
        word
        for keyword, args in dockerfile()
        if keyword == "COPY" and "--from" not in args
        for word in args.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert source.rstrip("/") in allowed, f"COPY {source} is kept out by .dockerignore"
        assert (REPO / source).exists()
    assert allowed.isdisjoint({"config", "tests", ".venv", ".git", "deploy"})


# -- compose --------------------------------------------------------------------------------


def test_every_path_compose_builds_from_or_mounts_exists() -> None:
    """Build contexts hold a Dockerfile, bind mounts exist, named volumes are declared."""
    declared = set(COMPOSE.get("volumes", {}))
    for name, service in SERVICES.items():
        if "build" in service:
            context = service["build"]
            context = context if isinstance(context, str) else context["context"]
            assert (REPO / context / "Dockerfile").is_file(), name
        for spec in service.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_the_compose_rotator_mounts_only_the_dev_environment() -> None:
    """The rotator sees one policy directory, holding only the dev environment, as its config."""
    rotator = SERVICES["rotator"]
    binds = [spec for spec in rotator["volumes"] if spec.startswith(".")]
    assert len(binds) == 1
    source, target, mode = binds[0].split(":")
    assert (target, mode) == (rotator["environment"]["VAULT_ROTATOR_CONFIG"], "ro")
    files = sorted(p.name for p in (REPO / source).iterdir())
    assert files == ["dev.yaml"]
    assert yaml.safe_load((REPO / source / "dev.yaml").read_text())["environment"] == "dev"


def test_compose_services_wait_for_what_they_need_and_restart() -> None:
    """Healthchecks on vault, emulator and rotator; depends_on with conditions; restart policies."""
    for name in ("vault", "emulator", "rotator"):
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD", name
    rotator = SERVICES["rotator"]
    assert rotator["restart"] == "unless-stopped"
    assert rotator["depends_on"] == {
        "vault": {"condition": "service_healthy"},
        "emulator": {"condition": "service_healthy"},
        "seed": {"condition": "service_completed_successfully"},
    }
    assert SERVICES["seed"]["depends_on"]["emulator"] == {"condition": "service_healthy"}
    assert SERVICES["agent"]["depends_on"]["seed"] == {
        "condition": "service_completed_successfully"
    }
    for name, service in SERVICES.items():
        for spec in service.get("ports", []):
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} beyond loopback"


def test_compose_commands_parse_and_point_at_each_other() -> None:
    """The emulator and rotator commands parse with the CLI; addresses name compose services."""
    emulator_cmd = SERVICES["emulator"]["command"]
    args = build_parser().parse_args(emulator_cmd)
    assert (args.host, args.dialect) == ("0.0.0.0", "c")
    dev = yaml.safe_load((COMPOSE_DIR / "config" / "dev.yaml").read_text())
    base = urlsplit(dev["provider"]["base_url"])
    assert (base.hostname, base.port) == ("emulator", args.port)
    assert dev["provider"]["dialect"] == args.dialect
    assert SERVICES["seed"]["environment"]["MANAGEMENT_KEY"] in args.management_key
    assert SERVICES["seed"]["environment"]["EMULATOR_URL"] == f"http://emulator:{args.port}"
    vault = urlsplit(SERVICES["rotator"]["environment"]["VAULT_ADDR"])
    dev_listen = SERVICES["vault"]["environment"]["BAO_DEV_LISTEN_ADDRESS"]
    assert (vault.hostname, vault.port) == ("vault", port_of(dev_listen))
    assert SERVICES["seed"]["environment"]["BAO_ADDR"] == f"http://vault:{vault.port}"
    if "--metrics-listen" not in cli_verbs()["run"]._option_string_actions:
        pytest.skip("run --metrics-listen is decided (issue 12) but not in the CLI yet")
    build_parser().parse_args(SERVICES["rotator"]["command"])


def test_the_seeder_reads_the_variables_compose_sets() -> None:
    """Each variable compose gives the seeder is one seed.sh reads."""
    script = (COMPOSE_DIR / "seed.sh").read_text()
    read = set(re.findall(r"\$\{(\w+)", script))
    assert set(SERVICES["seed"]["environment"]) <= read


def test_every_environment_variable_named_is_documented() -> None:
    """VAULT_*/AROUTER_* names in the Dockerfile, compose, manifests and systemd are README's."""
    named = set(OURS.findall((REPO / "Dockerfile").read_text()))
    for service in SERVICES.values():
        names = set(service.get("environment", {}))
        named |= names if "build" in service else {n for n in names if OURS.fullmatch(n)}
    for _, doc in manifests():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            named |= {e["name"] for e in container.get("env", []) if OURS.fullmatch(e["name"])}
    named |= set(
        re.findall(r"^Environment=(\w+)=", (SYSTEMD / "vault-rotator.service").read_text(), re.M)
    )
    named |= set(re.findall(r"^#? ?(\w+)=", (SYSTEMD / "vault-rotator.env").read_text(), re.M))
    named |= set(OURS.findall((K8S / "deployment.yaml").read_text()))
    assert "VAULT_K8S_ROLE" in named
    assert "VAULT_ROLE_ID_FILE" in named
    assert sorted(named - documented_variables()) == []


def test_the_compose_vault_policies_are_what_vault_policy_prints() -> None:
    """deploy/compose's rotator and consumer policies grant exactly what `vault-policy` prints."""
    if "vault-policy" not in cli_verbs():
        pytest.skip("vault-rotator vault-policy is decided (issue 12) but not in the CLI yet")
    config = str(COMPOSE_DIR / "config")
    for args, file in (
        (["rotator"], "rotator-policy.hcl"),
        (["consumer", "dev/demo-app"], "consumer-policy.hcl"),
    ):
        out = subprocess.run(
            [*CLI, "vault-policy", *args, "--config", config],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        shipped = policy_rules((COMPOSE_DIR / file).read_text())
        assert shipped, file
        assert shipped == policy_rules(out.stdout), file


def test_the_compose_agent_renders_the_key_dev_yaml_serves() -> None:
    """agent.hcl's template is deploy/agent's, for dev.yaml's secret, into the consumer's file."""
    named = {name: Path("/volumes") / name for name in COMPOSE["volumes"]}
    agent, consumer = SERVICES["agent"], SERVICES["consumer"]
    agent_mounts, consumer_mounts = mounts(agent, named), mounts(consumer, named)
    config_path = agent["entrypoint"][-1].removeprefix("-config=")
    hcl = host_path(config_path, agent_mounts).read_text()
    source = re.search(r'source\s*=\s*"([^"]+)"', hcl)
    destination = re.search(r'destination\s*=\s*"([^"]+)"', hcl)
    assert source is not None
    assert destination is not None
    assert host_path(source.group(1), agent_mounts) == AGENT_TEMPLATE
    rendered = host_path(destination.group(1), agent_mounts)
    key_file = consumer["command"][consumer["command"].index("--key-file") + 1]
    assert host_path(key_file, consumer_mounts) == rendered
    dev = yaml.safe_load((COMPOSE_DIR / "config" / "dev.yaml").read_text())
    (key,) = dev["keys"]
    wanted = f'secret "{dev["vault"]["kv_mount"]}/data/{key["secret_path"]}"'
    assert wanted in AGENT_TEMPLATE.read_text()
    assert ".Data.data.api_key" in template_body(AGENT_TEMPLATE.read_text())


def test_images_are_pinned_to_exact_versions() -> None:
    """Every compose image has an exact version tag; the consumer's Python is the Dockerfile's."""
    for name, service in SERVICES.items():
        if "image" in service and "build" not in service:
            assert re.search(r":\d+\.\d+\.\d+", service["image"]), f"{name}: {service['image']}"
    (arg,) = [a for k, a in dockerfile() if k == "ARG" and "PYTHON_IMAGE" in a]
    assert SERVICES["consumer"]["image"] == arg.split("=", 1)[1]


# -- systemd --------------------------------------------------------------------------------


def test_the_systemd_unit_is_hardened() -> None:
    """The unit runs `run` unprivileged, read-only, restarting on failure, settings from a file."""
    text = (SYSTEMD / "vault-rotator.service").read_text()
    settings = re.findall(r"^(\w+)=(.*)$", text, re.M)
    values = dict(settings)
    assert values["ExecStart"].endswith("vault-rotator run")
    assert values.get("DynamicUser") == "yes" or values.get("User")
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert values[key] == value, key
    assert values["EnvironmentFile"].endswith("vault-rotator.env")
    assert values["CapabilityBoundingSet"] == ""


def test_systemd_analyze_finds_nothing_but_the_missing_binary() -> None:
    """`systemd-analyze verify` objects to nothing but the absence of /opt/vault-rotator."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    out = subprocess.run(
        [analyze, "verify", str(SYSTEMD / "vault-rotator.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert all("/opt/vault-rotator/bin/vault-rotator is not executable" in x for x in lines), lines


# -- real runs ------------------------------------------------------------------------------


@pytest.fixture
def named_volumes(tmp_path: Path) -> dict[str, Path]:
    """A host directory standing in for each named volume of the compose file."""
    volumes = {name: tmp_path / "volumes" / name for name in COMPOSE["volumes"]}
    for path in volumes.values():
        path.mkdir(parents=True)
    return volumes


def bao_env(addr: str, token: str, home: Path) -> dict[str, str]:
    """A clean environment for the `bao` CLI and the seeder script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    bin_dir = str(Path(bao_binary()).parent)
    return (
        env
        | {"BAO_ADDR": addr, "BAO_TOKEN": token, "HOME": str(home)}
        | {"PATH": bin_dir + os.pathsep + env.get("PATH", "")}
    )


def seed_env(volumes: dict[str, Path]) -> dict[str, str]:
    """The seeder's path variables: their container defaults mapped through compose's mounts."""
    script = (COMPOSE_DIR / "seed.sh").read_text()
    table = mounts(SERVICES["seed"], volumes)
    refs = re.findall(r'"\$(\w+)/([\w.-]+)"', script)
    env = {}
    for var, default in re.findall(r"^(\w+)=\$\{\1:?-(/[^}]*)\}", script, re.M):
        children = [child for v, child in refs if v == var]
        hosts = {host_path(f"{default}/{c}", table).parent for c in children}
        hosts = hosts or {host_path(default, table)}
        assert len(hosts) == 1, var
        env[var] = str(hosts.pop())
    return env


@pytest.fixture
def agent_process(tmp_path: Path, named_volumes: dict[str, Path]) -> Iterator[Any]:
    """Starts compose's agent (agent.hcl with its paths mapped) on demand; stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(addr: str) -> None:
        agent = SERVICES["agent"]
        table = mounts(agent, named_volumes)
        hcl = host_path(agent["entrypoint"][-1].removeprefix("-config="), table).read_text()
        hcl = re.sub(r'"(/[^"]+)"', lambda m: f'"{host_path(m.group(1), table)}"', hcl)
        hcl = hcl.replace('"http://vault:8200"', f'"{addr}"')
        config = tmp_path / "agent.hcl"
        config.write_text(hcl)
        with (tmp_path / "agent.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [bao_binary(), "agent", f"-config={config}"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=bao_env(addr, "", tmp_path),
                )
            )

    yield start
    for proc in procs:
        stop_process(proc)


@pytest.mark.slow
def test_the_compose_loop_runs_on_loopback(
    tmp_path: Path, named_volumes: dict[str, Path], agent_process: Any
) -> None:
    """seed.sh, agent.hcl with the shipped template, and consumer.py work as compose wires them."""
    if shutil.which("wget") is None:
        pytest.skip("wget is not installed (the openbao image's busybox has it)")
    management_key = SERVICES["seed"]["environment"]["MANAGEMENT_KEY"]
    with (
        bao_dev_server() as vault,
        Emulator(dialect="c", management_keys=[management_key]) as emulator,
    ):
        env = bao_env(vault.addr, vault.token, tmp_path)
        seed = env | seed_env(named_volumes) | {"EMULATOR_URL": emulator.base_url, "OWNER": ""}
        script = COMPOSE_DIR / "seed.sh"
        for _run in range(2):  # a second `docker compose up` leaves the secret alone
            out = subprocess.run(
                ["sh", str(script)],
                env=seed,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.returncode == 0, out.stdout + out.stderr
        assert "exists; left as it is" in out.stdout
        (key,) = emulator.live_keys()

        def bao(*args: str, token: str = vault.token) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [bao_binary(), *args],
                env=env | {"BAO_TOKEN": token},
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            )

        served = bao("kv", "get", "-mount=secret", "-field=key_id", "arouter/dev/demo-app")
        assert served.stdout.strip() == key["id"]
        agent_token = (named_volumes["agent-auth"] / "token").read_text().strip()
        refused = bao("kv", "get", "-mount=secret", "arouter/dev/management", token=agent_token)
        assert refused.returncode != 0
        assert "permission denied" in refused.stderr

        agent_process(vault.addr)
        rendered = named_volumes["rendered"] / "api_key"
        deadline = time.monotonic() + 30
        while not (rendered.exists() and rendered.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        value = bao("kv", "get", "-mount=secret", "-field=api_key", "arouter/dev/demo-app")
        assert rendered.read_text() == value.stdout.strip(), (tmp_path / "agent.log").read_text()

        command = list(SERVICES["consumer"]["command"])
        table = mounts(SERVICES["consumer"], named_volumes)
        command[1] = str(host_path(command[1], table))
        for flag, new in (("--key-file", None), ("--base-url", emulator.base_url)):
            at = command.index(flag) + 1
            command[at] = new or str(host_path(command[at], table))
        out = subprocess.run(
            [sys.executable, *command[1:], "--count", "2", "--interval", "0"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert value.stdout.strip() not in out.stdout  # fingerprints only
        calls = [c for c in emulator.inference_log() if c["key_id"] == key["id"]]
        assert [c["status"] for c in calls] == [200, 200]

        config = tmp_path / "config"
        config.mkdir()
        dev = (COMPOSE_DIR / "config" / "dev.yaml").read_text()
        (config / "dev.yaml").write_text(dev.replace("http://emulator:8787", emulator.base_url))
        rotator_env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")} | {
            "VAULT_ADDR": vault.addr,
            "VAULT_TOKEN_FILE": str(named_volumes["rotator-auth"] / "token"),
        }
        dry = subprocess.run(
            [*CLI, "rotate", "dev/demo-app", "--dry-run", "--config", str(config)],
            env=rotator_env,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dry.returncode == 0, dry.stdout + dry.stderr


@pytest.mark.slow
def test_the_wheel_the_dockerfile_builds_installs_and_validates_the_compose_policies(
    tmp_path: Path,
) -> None:
    """A wheel built from the Dockerfile's context, installed fresh, validates compose's config."""
    build = [a for k, a in dockerfile() if k == "RUN" and "pip wheel" in a]
    assert build
    assert "python -m pip wheel --no-cache-dir --no-deps . -w /wheels" in build[0]
    context = tmp_path / "context"
    context.mkdir()
    for keyword, args in dockerfile():
        if keyword == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                path = REPO / source
                if path.is_dir():
                    shutil.copytree(
                        path, context / source, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy2(path, context / source)
    quiet = ["--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            *quiet,
            "--no-deps",
            ".",
            "-w",
            str(tmp_path / "dist"),
        ],
        cwd=context,
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("vault_rotator-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", *quiet]
    subprocess.run([*pip, str(wheel)], check=True, timeout=300)
    out = subprocess.run(
        [str(venv / "bin" / "vault-rotator"), "validate", "--config", str(COMPOSE_DIR / "config")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "environment dev, 1 key" in out.stdout
