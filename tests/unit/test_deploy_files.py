"""The container and Kubernetes files (infra/docker/Dockerfile, .dockerignore, infra/k8s/)
against the code they run, without a Docker engine or a cluster: every object is valid
against the Kubernetes OpenAPI schema (kubernetes-validate, strict), every command line
parses as a `switchboard` command, every port is the setting's default, every variable
is a setting, a secret or one of the few named below, and the Prometheus jobs pass
promtool and pick the right pods (their relabel rules run against the pod templates)."""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import click
import pytest
import yaml

from connectors.sources.gateway import create_gateway
from connectors.sources.publisher import Publisher
from connectors.sources.registry import SOURCES
from streams.cli import main
from streams.settings import Settings, secret_env
from streams.web import LOOKUP_TOKEN_SECRET, TOKEN_SECRET

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "infra" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_TEMPLATE = K8S / "secret.template.yaml"
PROMETHEUS_K8S = K8S / "prometheus-kubernetes.yml"
NATIVE_PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
# The oldest Kubernetes these files are meant for, and the newest schema bundled.
OLDEST_KUBERNETES = "1.28"

# Container variables that are not Switchboard settings, and why they are there.
OTHER_VARIABLES: dict[str, str] = {}
SECRET_NAME = re.compile(r"SWITCHBOARD_SECRET_[A-Z0-9_]+")
# What each scrape job must find, by the pods' app.kubernetes.io/component label.
JOB_OF_COMPONENT = {
    "gateway": "switchboard-gateway",
    "lookup": "switchboard-lookup",
    "worker": "switchboard-worker",
    "sink": "switchboard-sink",
}
POD_IP = "10.1.2.3"


def default(field: str) -> Any:
    """A setting's default, whatever SWITCHBOARD_* the test run has in its environment."""
    return Settings.model_fields[field].default


# --- the files -----------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(KUSTOMIZATION.read_text())
    return loaded


def applied() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k infra/k8s` applies."""
    return [doc for name in kustomization()["resources"] for doc in load_all(K8S / name)]


def every_object() -> list[dict[str, Any]]:
    """Those and the Secret template."""
    return applied() + load_all(SECRET_TEMPLATE)


def named(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in every_object() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [o for o in applied() if o["kind"] in {"Deployment", "StatefulSet", "Job"}]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def component(workload: dict[str, Any]) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return cast(dict[str, Any], container)


def configmap() -> dict[str, str]:
    data: dict[str, str] = named("ConfigMap", "switchboard-settings")["data"]
    return data


def env_value(container: dict[str, Any], name: str) -> str:
    (value,) = [e["value"] for e in container.get("env", []) if e["name"] == name]
    return str(value)


@cache
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (keyword, rest), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    keywords = [keyword for keyword, _ in dockerfile()]
    last_from = len(keywords) - 1 - keywords[::-1].index("FROM")
    return dockerfile()[last_from:]


def instruction(keyword: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
    return [rest for k, rest in (stage or final_stage()) if k == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instruction("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


# --- kubernetes-validate ---------------------------------------------------------------


@cache
def kubernetes_validate() -> ModuleType:
    try:
        return importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        pytest.fail(
            "kubernetes-validate is missing: it is a dev dependency (pip install -e .[dev])"
        )


def test_kustomization_applies_every_manifest_but_the_template_in_one_namespace() -> None:
    manifests = {path.name for path in K8S.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert set(kustomization()["resources"]) == manifests - {SECRET_TEMPLATE.name}
    namespace = kustomization()["namespace"]
    assert named("Namespace", namespace)
    for obj in every_object():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "newest"])
def test_every_object_is_valid_against_the_kubernetes_schema(version: str) -> None:
    validator = kubernetes_validate()
    wanted = str(validator.latest_version()) if version == "newest" else version
    for obj in every_object():
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            # strict: a field the schema does not know (a typo) is an error too.
            validator.validate(obj, wanted, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{where} is not a valid Kubernetes {wanted} object: {exc.message}")


def test_kustomize_renders_the_objects_listed() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: kustomize's own rendering is not checked")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in applied()
    )


# --- commands, ports, variables ----------------------------------------------------------


def parse_command_line(args: list[str]) -> click.Command:
    """The command `switchboard ARGS` runs, its arguments checked (choices, required
    ones, nothing left over) as click checks them, without running it."""
    command: click.Command = main
    context = click.Context(main, info_name="switchboard")
    remaining = list(args)
    while isinstance(command, click.Group):
        assert remaining, f"switchboard {' '.join(args)}: names a group, not a command"
        name, *remaining = remaining
        sub = command.get_command(context, name)
        assert sub is not None, f"switchboard {' '.join(args)}: no command {name!r}"
        command = sub
        if not isinstance(command, click.Group):
            command.make_context(name, remaining, parent=context)
        context = click.Context(command, info_name=name, parent=context)
    return command


def test_every_container_runs_a_real_switchboard_command() -> None:
    seen = set()
    for workload in workloads():
        for container in containers(workload["spec"]["template"]["spec"]):
            # No `command`: the image's ENTRYPOINT (switchboard) runs the args.
            assert "command" not in container, container["name"]
            parse_command_line(container["args"])
            seen.add(" ".join(container["args"]))
    assert seen == {
        "worker",
        "gateway",
        "lookup",
        "sink crm",
        "sink notify",
        "sink billing",
        "topics create",
        "schemas register",
    }
    (cmd,) = instruction("CMD")
    parse_command_line(json.loads(cmd))


def test_the_command_line_check_refuses_what_switchboard_refuses() -> None:
    for wrong in (["sink", "ledger"], ["topic", "create"], ["topics"], ["worker", "extra"]):
        with pytest.raises((click.UsageError, AssertionError)):
            parse_command_line(wrong)


def test_ports_and_probes_are_the_settings_defaults() -> None:
    # The port, and the path each probe asks for (any probe not named: the first).
    expected: dict[str, tuple[int, dict[str, str]]] = {
        "worker": (default("web_port"), {"": "/metrics"}),
        "gateway": (default("gateway_port"), {"": "/healthz"}),
        # Ready once the view has read the changelogs; alive while it answers at all, so
        # that a long first read is not killed and started over.
        "lookup": (default("lookup_port"), {"": "/healthz", "livenessProbe": "/metrics"}),
    }
    sink_port = default("metrics_port")
    for workload in workloads():
        role = component(workload)
        template = workload["spec"]["template"]
        container = only_container(workload)
        if role == "setup":
            assert "ports" not in container
            continue
        ((port_name, port),) = [(p["name"], p["containerPort"]) for p in container["ports"]]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == port
        assert container["readinessProbe"] and container["livenessProbe"]
        probes = {
            k: container[k]
            for k in ("startupProbe", "readinessProbe", "livenessProbe")
            if k in container
        }
        if role == "sink":
            assert port == sink_port
            for probe in probes.values():
                command = " ".join(probe["exec"]["command"])
                assert f"http://127.0.0.1:{sink_port}/metrics" in command
        else:
            want_port, paths = expected[role]
            assert port == want_port, workload["metadata"]["name"]
            for kind, probe in probes.items():
                want_path = paths.get(kind, paths[""])
                assert probe["httpGet"] == {"path": want_path, "port": port_name}, kind
    exposed = {int(port) for rest in instruction("EXPOSE") for port in rest.split()}
    assert exposed == {
        default("web_port"),
        default("gateway_port"),
        default("lookup_port"),
        sink_port,
    }


def test_the_gateway_serves_the_paths_its_probes_and_scrapes_ask_for() -> None:
    # The publisher is only handed to the request handlers, and no request is made.
    app = create_gateway(Settings(), cast(Publisher, object()), {})
    paths = {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }
    assert {"/healthz", "/metrics"} <= paths


def test_services_point_at_the_pods_ports() -> None:
    for service in (o for o in applied() if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        (workload,) = [
            w
            for w in workloads()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"]: p["containerPort"] for p in only_container(workload)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["port"] == ports[port["targetPort"]], service["metadata"]["name"]


def selected(selector: dict[str, Any]) -> list[str]:
    """The components whose pods a label selector (matchLabels) picks."""
    return [
        component(w)
        for w in workloads()
        if selector["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_the_gateway_asks_the_lookup_at_its_service() -> None:
    url = configmap()["SWITCHBOARD_LOOKUP_URL"]
    service = named("Service", "switchboard-lookup")
    assert selected({"matchLabels": service["spec"]["selector"]}) == ["lookup"]
    ((port,),) = [[p["port"] for p in service["spec"]["ports"]]]
    assert url == f"http://{service['metadata']['name']}:{port}"
    assert Settings(lookup_url=url).lookup_url == url


def test_only_the_gateway_and_the_monitoring_namespace_reach_the_lookup() -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in applied() if o["kind"] == "NetworkPolicy"}
    for name, spec in policies.items():
        # Each policy guards one component, on ports its container names.
        (guarded,) = selected(spec["podSelector"])
        (workload,) = [w for w in workloads() if component(w) == guarded]
        names = {p["name"] for p in only_container(workload)["ports"]}
        for rule in spec["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= names, name
    lookup = policies["switchboard-lookup"]
    assert selected(lookup["podSelector"]) == ["lookup"]
    assert lookup["policyTypes"] == ["Ingress"]
    ((rule,),) = [lookup["ingress"]]
    pods = [peer["podSelector"] for peer in rule["from"] if "podSelector" in peer]
    namespaces = [peer["namespaceSelector"] for peer in rule["from"] if "namespaceSelector" in peer]
    assert [selected(pod) for pod in pods] == [["gateway"]]
    assert namespaces == [{"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}]


def test_every_variable_is_a_setting_a_secret_or_named() -> None:
    settings = {"SWITCHBOARD_" + name.upper() for name in Settings.model_fields}

    def known(name: str) -> bool:
        return name in settings or SECRET_NAME.fullmatch(name) is not None

    names = [*configmap()]
    for secret in load_all(SECRET_TEMPLATE):
        names += secret["stringData"]
    names += [name for name in dockerfile_env() if name.startswith("SWITCHBOARD_")]
    for workload in workloads():
        for container in containers(workload["spec"]["template"]["spec"]):
            names += [
                e["name"] for e in container.get("env", []) if e["name"] not in OTHER_VARIABLES
            ]
    unknown = sorted({name for name in names if not known(name)})
    assert not unknown, f"not a Settings field (streams/settings.py) nor a secret: {unknown}"


def test_the_image_listens_on_every_interface() -> None:
    env = dockerfile_env()
    assert env["SWITCHBOARD_WEB_BIND"] == "0.0.0.0"
    assert env["SWITCHBOARD_GATEWAY_BIND"] == "0.0.0.0"
    assert env["SWITCHBOARD_LOOKUP_BIND"] == "0.0.0.0"


def test_the_settings_the_pods_get_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in list(os.environ) if n.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(name)
    worker = next(w for w in workloads() if component(w) == "worker")
    env = {
        **{k: v for k, v in dockerfile_env().items() if k.startswith("SWITCHBOARD_")},
        **configmap(),
        "SWITCHBOARD_DATA_DIR": env_value(only_container(worker), "SWITCHBOARD_DATA_DIR"),
    }
    for secret in load_all(SECRET_TEMPLATE):
        env.update({k: v for k, v in secret["stringData"].items() if v})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.partitions, settings.replication_factor, settings.min_insync_replicas) == (
        12,
        3,
        2,
    )
    assert settings.store == "rocksdb://"
    assert settings.processing_guarantee == "exactly_once"
    assert settings.crm_database_url.startswith("postgresql+psycopg://")
    assert settings.sink_ledger_url.startswith("postgresql+psycopg://")


def test_the_secret_template_names_every_secret_and_holds_none() -> None:
    gateway = named("Secret", "switchboard-gateway-secrets")["stringData"]
    # Each source's signing secret, and the caller lookup's token it carries.
    lookup = secret_env(LOOKUP_TOKEN_SECRET)
    assert set(gateway) == {secret_env(source) for source in SOURCES} | {lookup}
    factory = (ROOT / "connectors" / "sinks" / "factory.py").read_text()
    wanted = {secret_env(name) for name in re.findall(r"\b_?secret\(\s*\"(\w+)\"", factory)}
    assert wanted, "found no secret(...) in connectors/sinks/factory.py"
    sink = named("Secret", "switchboard-sink-secrets")["stringData"]
    assert wanted <= set(sink)
    for name, value in {**gateway, **sink}.items():
        if SECRET_NAME.fullmatch(name):
            assert value == "", f"{name} has a value in the template"
    for workload in workloads():
        refs = [
            ref["secretRef"]["name"]
            for c in containers(workload["spec"]["template"]["spec"])
            for ref in c.get("envFrom", [])
            if "secretRef" in ref
        ]
        assert refs == {
            "gateway": ["switchboard-gateway-secrets"],
            "lookup": ["switchboard-lookup-secrets"],
            "sink": ["switchboard-sink-secrets"],
            "worker": ["switchboard-worker-secrets"],
        }.get(component(workload), []), workload["metadata"]["name"]
    worker = named("Secret", "switchboard-worker-secrets")["stringData"]
    assert worker == {secret_env(TOKEN_SECRET): ""}
    # The lookup's token, the one the gateway carries to it.
    assert named("Secret", "switchboard-lookup-secrets")["stringData"] == {lookup: ""}


QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?")
SUFFIX = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
SUFFIX |= {f"{p}i": 1024.0 ** (n + 1) for n, p in enumerate("KMGTPE")}


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity ("500m", "3Gi", 2) as a number."""
    found = QUANTITY.fullmatch(str(value))
    assert found is not None, f"{value!r} is not a Kubernetes quantity"
    return float(found.group(1)) * SUFFIX[found.group(2)]


# --- the pods -------------------------------------------------------------------------------


def test_every_pod_runs_as_the_image_user_without_service_links() -> None:
    (user,) = instruction("USER")
    uid, _, gid = user.partition(":")
    images = {image["name"] for image in kustomization()["images"]}
    for workload in workloads():
        spec = workload["spec"]["template"]["spec"]
        # Service links inject <SERVICE>_PORT=tcp://...: SWITCHBOARD_GATEWAY_PORT, a setting.
        assert spec["enableServiceLinks"] is False, workload["metadata"]["name"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (uid, gid)
        for container in containers(spec):
            # The name kustomization.yaml's `images` retags.
            assert container["image"].partition(":")[0] in images
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) == {"cpu", "memory"}, container["name"]
            for resource in ("cpu", "memory"):
                # The API server refuses a request above its limit.
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert quantity(request) <= quantity(limit), f"{container['name']} {resource}"


def test_the_workers_are_a_stateful_set_with_their_tables_on_a_volume() -> None:
    (worker,) = [w for w in workloads() if component(w) == "worker"]
    spec = worker["spec"]
    assert worker["kind"] == "StatefulSet"
    assert spec["podManagementPolicy"] == "Parallel"
    # A second worker takes over at once; past the partitions, workers idle.
    assert 2 <= spec["replicas"] <= int(configmap()["SWITCHBOARD_PARTITIONS"])
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    container = only_container(worker)
    ((claim,),) = [[t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim] == env_value(container, "SWITCHBOARD_DATA_DIR")
    assert configmap()["SWITCHBOARD_STORE"] == "rocksdb://"
    service = named("Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None"


# --- the image ------------------------------------------------------------------------------


def test_the_image_installs_the_project_without_dev_extras_and_runs_switchboard() -> None:
    froms = instruction("FROM", dockerfile())
    assert len(froms) == 2, "a build stage and a runtime stage"
    (base,) = {rest.split()[0] for rest in froms}
    assert instruction("ARG", dockerfile()[:1]) == ["PYTHON_IMAGE=python:3.11-slim"]
    assert base == "${PYTHON_IMAGE}"
    installs = [rest for _, rest in dockerfile() if "pip install" in rest]
    assert installs and all("--constraint constraints.txt ." in r for r in installs)
    assert not any("[dev]" in r or "-e " in r for r in installs)
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["switchboard"]
    assert json.loads(instruction("CMD")[0]) == ["worker"]
    (user,) = instruction("USER")
    assert not user.startswith("0") and user.split(":")[0].isdigit()


def test_the_build_context_holds_what_the_image_copies_and_not_the_local_state() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for rest in instruction("COPY", dockerfile())
        if not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]} <= set(
        copied
    )
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, p) for p in patterns), f"{source} is ignored"
    for local in (".git", ".venv", ".run", ".cache", "bench-results", "**/__pycache__"):
        assert local in patterns


def test_the_install_carries_every_file_the_code_loads_beside_itself() -> None:
    """`pip install .` (not editable) takes only the package-data globs: a rule file they
    miss is absent from the image and the worker does not start."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    covered = {
        path
        for package, globs in setuptools["package-data"].items()
        for pattern in globs
        for path in (ROOT / package.replace(".", "/")).glob(pattern)
    }
    data = {
        path
        for package in ("streams", "connectors", "processors", "schemas")
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
    missing = sorted(str(path.relative_to(ROOT)) for path in data - covered)
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


# --- Prometheus ------------------------------------------------------------------------------


def promtool(config: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make infra-up` installs Debian's prometheus package")
    return subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {
        job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_K8S.read_text())["scrape_configs"]
    }


def test_the_kubernetes_scrape_config_passes_promtool(tmp_path: Path) -> None:
    checked = promtool(PROMETHEUS_K8S)
    if "field kubernetes_sd_configs not found" in checked.stdout + checked.stderr:
        # Debian's promtool is built without Kubernetes discovery: check everything else
        # (relabel rules, regexes, job names) with a file discovery in its place.
        config = yaml.safe_load(PROMETHEUS_K8S.read_text())
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs") == [
                {"role": "pod", "namespaces": {"names": [kustomization()["namespace"]]}}
            ]
            job["file_sd_configs"] = [{"files": ["targets.json"]}]
        (tmp_path / "targets.json").write_text("[]")
        swapped = tmp_path / "prometheus.yml"
        swapped.write_text(yaml.safe_dump(config))
        checked = promtool(swapped)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_kubernetes_scrape_jobs_are_the_ones_the_alerts_and_dashboards_use() -> None:
    native = {
        job["job_name"] for job in yaml.safe_load(NATIVE_PROMETHEUS.read_text())["scrape_configs"]
    }
    assert set(scrape_jobs()) == native == set(JOB_OF_COMPONENT.values())


def sanitized(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def discovered(workload: dict[str, Any], pod: str) -> list[dict[str, str]]:
    """The targets Prometheus's pod discovery makes of one pod of ``workload``: one per
    declared container port, one per container without any."""
    template = workload["spec"]["template"]
    meta = {
        "__meta_kubernetes_namespace": workload["metadata"]["namespace"],
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_ip": POD_IP,
        "__meta_kubernetes_pod_phase": "Running",
    }
    for key, value in template["metadata"].get("labels", {}).items():
        meta[f"__meta_kubernetes_pod_label_{sanitized(key)}"] = value
    for key, value in template["metadata"].get("annotations", {}).items():
        meta[f"__meta_kubernetes_pod_annotation_{sanitized(key)}"] = value
    targets = []
    for container in containers(template["spec"]):
        ports = [p["containerPort"] for p in container.get("ports", [])]
        for port in ports or [None]:
            address = POD_IP if port is None else f"{POD_IP}:{port}"
            targets.append({**meta, "__address__": address, "job": "?"})
    return targets


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's keep, drop and replace actions (anchored regex, ';' separator, $N)."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(n, "") for n in rule["source_labels"])
        match = re.fullmatch(str(rule.get("regex", "(.*)")), value)
        action = rule.get("action", "replace")
        if (action == "keep" and match is None) or (action == "drop" and match is not None):
            return None
        if action == "replace" and match is not None:
            groups = match

            def group(m: re.Match[str], groups: re.Match[str] = groups) -> str:
                return groups.group(int(m.group(1))) or ""

            result = re.sub(r"\$\{?(\d+)\}?", group, str(rule.get("replacement", "$1")))
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
        elif action not in {"keep", "drop", "replace"}:
            pytest.fail(f"the relabel simulation does not know action {action!r}")
    return labels


def test_each_job_scrapes_its_pods_and_nothing_else() -> None:
    for workload in workloads():
        pod = f"{workload['metadata']['name']}-0"
        found = []
        for job_name, job in scrape_jobs().items():
            for target in discovered(workload, pod):
                kept = relabel(target, job["relabel_configs"])
                if kept is not None:
                    found.append((job_name, kept))
        role = component(workload)
        if role not in JOB_OF_COMPONENT:
            assert found == [], f"{pod} is scraped"
            continue
        ((job_name, labels),) = found
        port = only_container(workload)["ports"][0]["containerPort"]
        assert job_name == JOB_OF_COMPONENT[role]
        assert labels["__address__"] == f"{POD_IP}:{port}"
        assert labels.get("__metrics_path__") == "/metrics"
        assert labels["instance"] == pod
        if role == "sink":
            assert labels["sink"] == workload["metadata"]["labels"]["switchboard/sink"]
            assert labels["sink"] == only_container(workload)["args"][1]
