"""Static checks of deploy/: the compose file, the Envoy configs, the Kubernetes manifests and the Dockerfile.

Docker, Kubernetes and Envoy are not run here. These tests parse every YAML file and check what a
wrong edit would break: images pinned, readiness on the gRPC port, no secret values in the files,
every ``LOOKALIKE_*`` variable and every flag being a real server setting, the compose file on
Milvus' official images, and the Envoy configs routing gRPC and HTTP to health-checked replicas.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

GRPC_PORT, HTTP_PORT, METRICS_PORT = 50051, 8080, 9090
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY|ROOT_USER|API_KEY", re.IGNORECASE)


# -- loading -------------------------------------------------------------------------------------
def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    (doc,) = load_all(DEPLOY / "docker-compose.yml")
    return doc


def envoy_configs() -> dict[str, dict[str, Any]]:
    return {name: load_all(DEPLOY / name)[0] for name in ("envoy.yaml", "k8s/envoy-bootstrap.yaml")}


def kustomization() -> dict[str, Any]:
    (doc,) = load_all(DEPLOY / "k8s" / "kustomization.yaml")
    return doc


def k8s_objects() -> list[dict[str, Any]]:
    """Every Kubernetes object of the files kustomization.yaml lists."""
    objects = []
    for name in kustomization()["resources"]:
        objects += load_all(DEPLOY / "k8s" / name)
    return objects


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def pod_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_list(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_env() -> dict[str, str]:
    """Names and values of the Dockerfile's ENV instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile())
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", line))
    return env


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile(), re.MULTILINE)
    assert match, f"deploy/Dockerfile has no default for ARG {name}"
    return match.group(1)


def server_variables() -> set[str]:
    """Every environment variable `lookalike serve` reads, from its own settings object."""
    import dataclasses

    from lookalike.server.config import ServerConfig

    parser = argparse.ArgumentParser()
    ServerConfig.add_arguments(parser)
    names = set(re.findall(r"\(env\s+([A-Z][A-Z0-9_]*)", parser.format_help()))
    names |= {f.metadata["env_only"] for f in dataclasses.fields(ServerConfig) if "env_only" in f.metadata}
    assert "LOOKALIKE_PORT" in names and "LOOKALIKE_TOKEN" in names, "could not read the settings' variables"
    return names


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- every file --------------------------------------------------------------------------------
def test_every_yaml_file_parses_and_is_checked_here() -> None:
    files = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    checked = {"docker-compose.yml", "envoy.yaml", "k8s/envoy-bootstrap.yaml", "k8s/kustomization.yaml",
               "k8s/milvus-values.yaml"} | {f"k8s/{name}" for name in kustomization()["resources"]}  # fmt: skip
    for name in sorted(files):
        assert load_all(DEPLOY / name), f"deploy/{name} is empty"
    assert files == checked, f"YAML files no test covers: {sorted(files - checked)}; missing: {sorted(checked - files)}"


def all_images() -> dict[str, str]:
    """image reference -> where it is used, over compose, Kubernetes, Helm values and the Dockerfile."""
    images = {}
    for name, service in compose()["services"].items():
        images[service["image"]] = f"docker-compose.yml service {name}"
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            for c in pod_containers(obj):
                images[c["image"]] = f"k8s {obj['kind']} {obj['metadata']['name']} container {c['name']}"
    (values,) = load_all(DEPLOY / "k8s" / "milvus-values.yaml")
    image = values["image"]["all"]
    images[f"{image['repository']}:{image['tag']}"] = "k8s/milvus-values.yaml image.all"
    images[dockerfile_arg("PYTHON_IMAGE")] = "Dockerfile ARG PYTHON_IMAGE"
    return images


def test_images_are_pinned() -> None:
    images = all_images()
    assert len(images) >= 7
    for ref, where in images.items():
        name, _, tag = ref.rpartition(":")
        assert name and "/" not in tag, f"{where}: image {ref!r} has no tag"
        assert "${" not in ref, f"{where}: image {ref!r} must not depend on the environment"
        assert tag != "latest" and not tag.endswith("-latest"), f"{where}: image {ref!r} is not pinned"
        assert re.search(r"\d", tag), f"{where}: image {ref!r} names no version"


# -- secrets -----------------------------------------------------------------------------------
def test_no_secret_value_is_written_in_a_compose_variable() -> None:
    seen = 0
    for name, service in compose()["services"].items():
        for key, value in compose_env(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                seen += 1
                assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}", value), (
                    f"docker-compose.yml {name}: {key} must come from the environment (${{VAR}}), not {value!r}"
                )
                default = re.fullmatch(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", value)
                assert default is None or default.group(1) == "", f"{name}: {key} has a default secret"
    assert seen >= 5  # MinIO user and password (twice each) and the Milvus token


def test_no_secret_value_is_written_in_kubernetes_manifests() -> None:
    assert not of_kind("Secret"), "Secrets come from kustomization.yaml's secretGenerator files, never the repo"
    for cm in of_kind("ConfigMap"):
        for key in cm.get("data", {}):
            assert not SECRET_NAME.search(key), f"ConfigMap {cm['metadata']['name']} holds {key}"
    generated = {g["name"]: g for g in kustomization()["secretGenerator"]}
    for g in generated.values():
        assert "literals" not in g, f"secretGenerator {g['name']} has inline literals"
        for source in g.get("files", []) + g.get("envs", []):
            path = source.split("=", 1)[-1]
            assert path.startswith("secrets/"), f"{g['name']}: {path} must live in the git-ignored secrets/"
    assert "secrets/" in (DEPLOY / "k8s" / ".gitignore").read_text().split()
    refs = 0
    for deploy in of_kind("Deployment"):
        for c in pod_containers(deploy):
            for name, entry in env_list(c).items():
                if SECRET_NAME.search(name) and not name.endswith("_FILE"):
                    assert "value" not in entry, f"{c['name']}: {name} is written inline"
                    ref = entry["valueFrom"]["secretKeyRef"]
                    assert ref["name"] in generated, f"{name} reads Secret {ref['name']}, which nothing creates"
                    refs += 1
        for volume in deploy["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in generated, f"volume {volume['name']}: unknown Secret"
    assert refs >= 1  # LOOKALIKE_MILVUS_TOKEN


def test_no_secret_value_is_written_in_the_milvus_values() -> None:
    (values,) = load_all(DEPLOY / "k8s" / "milvus-values.yaml")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if re.search(r"password|secret|accesskey|token", str(key), re.IGNORECASE) and key != "existingSecret":
                    assert value in (None, ""), f"milvus-values.yaml {path}{key} holds a credential"
                walk(value, f"{path}{key}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(values, "")


# -- settings: every variable and flag is one `lookalike serve` reads --------------------------------
def used_variables() -> dict[str, str]:
    used = {}
    for name, service in compose()["services"].items():
        for key in compose_env(service):
            used[key] = f"docker-compose.yml service {name}"
    for deploy in of_kind("Deployment"):
        for c in pod_containers(deploy):
            for key in env_list(c):
                used[key] = f"k8s Deployment {deploy['metadata']['name']}"
    for key in dockerfile_env():
        used[key] = "Dockerfile ENV"
    for key in re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (DEPLOY / ".env.example").read_text(), re.MULTILINE):
        used[key] = "deploy/.env.example"
    # Also every mention in comments and docs (a commented-out LOOKALIKE_MODEL line must be right too),
    # except the Dockerfile's build arguments.
    build_args = set(re.findall(r"^ARG ([A-Z_][A-Z0-9_]*)", dockerfile(), re.MULTILINE))
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            for key in set(re.findall(r"\bLOOKALIKE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())) - build_args:
                used.setdefault(key, f"deploy/{path.relative_to(DEPLOY)}")
    return {k: v for k, v in used.items() if k.startswith("LOOKALIKE_")}


def test_every_lookalike_variable_is_a_server_setting() -> None:
    used = used_variables()
    assert {"LOOKALIKE_PORT", "LOOKALIKE_TOKEN_FILE", "LOOKALIKE_MILVUS_TOKEN", "LOOKALIKE_THREADS"} <= used.keys()
    known = server_variables()  # every variable the server reads is a ServerConfig setting, with no exception
    unknown = {name: where for name, where in used.items() if name not in known}
    assert not unknown, f"not `lookalike serve` settings: {unknown}"


def test_compose_command_is_a_valid_serve_command_line() -> None:
    from lookalike.server.config import ServerConfig

    from lookalike.cli import build_parser

    command = [str(x) for x in compose()["services"]["lookalike"]["command"]]
    args, extra = build_parser().parse_known_args(["serve", *command])
    assert not extra, f"docker-compose.yml passes what `lookalike serve` does not take: {extra}"
    config = ServerConfig.from_sources(args, environ={})
    assert (config.host, config.port, config.http_port, config.metrics_port) == (
        "0.0.0.0", GRPC_PORT, HTTP_PORT, METRICS_PORT)  # fmt: skip
    assert config.index == "milvus"
    assert re.fullmatch(r"https?://([a-z0-9-]+):19530", config.milvus_uri or "")
    assert config.milvus_uri.split("//")[1].split(":")[0] in compose()["services"], "--milvus-uri names no service"


# -- docker compose ----------------------------------------------------------------------------
def test_compose_runs_milvus_from_its_official_images() -> None:
    services = compose()["services"]
    official = {"etcd": "quay.io/coreos/etcd:", "minio": "minio/minio:", "milvus": "milvusdb/milvus:"}
    for name, prefix in official.items():
        assert services[name]["image"].startswith(prefix), f"{name} must run {prefix}..., not {services[name]['image']}"
    version = tuple(int(x) for x in re.findall(r"\d+", services["milvus"]["image"].split(":")[1])[:2])
    assert version >= (2, 5), "Milvus 2.5 or newer"
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    env = compose_env(milvus)
    assert env["ETCD_ENDPOINTS"].split(":")[0] in services and env["MINIO_ADDRESS"].split(":")[0] in services
    assert "healthz" in " ".join(milvus["healthcheck"]["test"])


def test_compose_lookalike_replicas_sit_behind_envoy() -> None:
    services = compose()["services"]
    lookalike = services["lookalike"]
    assert lookalike["deploy"]["replicas"] >= 2
    assert "ports" not in lookalike, "replicas publish no ports (they scale); clients use Envoy"
    assert (
        DEPLOY / lookalike["build"]["context"] / lookalike["build"]["dockerfile"]
    ).resolve() == DEPLOY / "Dockerfile"
    assert lookalike["depends_on"]["milvus"]["condition"] == "service_healthy"
    envoy = services["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:")
    mounted = {v.split(":")[0]: v.split(":")[1] for v in envoy["volumes"]}
    assert mounted["./envoy.yaml"] in envoy["command"], "Envoy must be started with the mounted deploy/envoy.yaml"
    published = {int(p.split(":")[-2]) for p in envoy["ports"]}
    assert published == {GRPC_PORT, HTTP_PORT}
    for secret in compose().get("secrets", {}).values():
        assert secret["file"].startswith("./secrets/"), "secret files live in the git-ignored deploy/secrets/"
    assert "secrets/" in (DEPLOY / ".gitignore").read_text().split()


# -- Envoy -------------------------------------------------------------------------------------
def listeners(config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {ln["address"]["socket_address"]["port_value"]: ln for ln in config["static_resources"]["listeners"]}


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def routed_cluster(listener: dict[str, Any]) -> str:
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    routes = [r for vh in hcm["typed_config"]["route_config"]["virtual_hosts"] for r in vh["routes"]]
    assert len({r["route"]["cluster"] for r in routes}) == 1
    return routes[0]["route"]["cluster"]


def upstream(cluster: dict[str, Any]) -> tuple[str, int]:
    (group,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = group["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    return address["address"], address["port_value"]


@pytest.mark.parametrize("name", ["envoy.yaml", "k8s/envoy-bootstrap.yaml"])
def test_envoy_routes_grpc_and_http_to_health_checked_replicas(name: str) -> None:
    config = envoy_configs()[name]
    ports = listeners(config)
    assert {GRPC_PORT, HTTP_PORT} <= ports.keys()
    by_name = clusters(config)

    grpc = by_name[routed_cluster(ports[GRPC_PORT])]
    assert upstream(grpc)[1] == int(dockerfile_env()["LOOKALIKE_PORT"]) == GRPC_PORT
    protocol = grpc["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in protocol["explicit_http_config"], "gRPC upstreams need HTTP/2"
    (check,) = grpc["health_checks"]
    assert "grpc_health_check" in check, "the gRPC cluster must use the grpc.health.v1 health check"
    assert check["grpc_health_check"].get("service_name", "") == "", "service '' is the whole server"

    http = by_name[routed_cluster(ports[HTTP_PORT])]
    assert upstream(http)[1] == int(dockerfile_env()["LOOKALIKE_HTTP_PORT"]) == HTTP_PORT
    (check,) = http["health_checks"]
    assert check["http_health_check"]["path"] == "/healthz"
    for cluster in (grpc, http):
        assert cluster["type"] == "STRICT_DNS", "every replica's address must become a host"
        for key in ("timeout", "interval", "unhealthy_threshold", "healthy_threshold"):
            assert key in cluster["health_checks"][0], f"{cluster['name']}: Envoy requires health_checks.{key}"
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_envoy_upstreams_name_the_replicas() -> None:
    compose_cfg, k8s_cfg = envoy_configs()["envoy.yaml"], envoy_configs()["k8s/envoy-bootstrap.yaml"]
    for cluster in clusters(compose_cfg).values():
        assert upstream(cluster)[0] == "lookalike" and "lookalike" in compose()["services"]
    headless = {s["metadata"]["name"] for s in of_kind("Service") if s["spec"].get("clusterIP") == "None"}
    namespace = kustomization()["namespace"]
    for cluster in clusters(k8s_cfg).values():
        host = upstream(cluster)[0]
        service, ns, *_ = host.split(".")
        assert service in headless, f"{host}: Envoy needs a headless Service to see every pod"
        assert ns == namespace and host.endswith(".svc.cluster.local")


def test_the_two_envoy_configs_differ_only_in_the_upstream_address() -> None:
    compose_cfg, k8s_cfg = envoy_configs()["envoy.yaml"], envoy_configs()["k8s/envoy-bootstrap.yaml"]
    for cluster in clusters(k8s_cfg).values():
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        address["socket_address"]["address"] = "lookalike"
    assert compose_cfg == k8s_cfg, "edit deploy/envoy.yaml and deploy/k8s/envoy-bootstrap.yaml together"


# -- Kubernetes --------------------------------------------------------------------------------
def test_kubernetes_objects_are_namespaced_and_complete() -> None:
    kinds = [o["kind"] for o in k8s_objects()]
    for kind in ("Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert kind in kinds, f"no {kind} in deploy/k8s"
    (namespace,) = of_kind("Namespace")
    assert namespace["metadata"]["name"] == kustomization()["namespace"]
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj["metadata"].get("name"), obj
        assert obj["metadata"].get("namespace") in (None, kustomization()["namespace"])


def lookalike_deployment() -> dict[str, Any]:
    (deploy,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "lookalike"]
    return deploy


def container_port(container: dict[str, Any], port: int | str) -> dict[str, Any]:
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def test_every_deployment_container_is_ready_only_when_its_grpc_port_answers() -> None:
    for deploy in of_kind("Deployment"):
        for c in deploy["spec"]["template"]["spec"]["containers"]:
            where = f"Deployment {deploy['metadata']['name']} container {c['name']}"
            probe = c.get("readinessProbe")
            assert probe, f"{where}: no readiness probe"
            (kind,) = [k for k in ("grpc", "tcpSocket", "httpGet", "exec") if k in probe]
            assert kind != "exec", f"{where}: readiness must probe the gRPC port"
            port = container_port(c, probe[kind]["port"])
            assert port["containerPort"] == GRPC_PORT and port.get("name") == "grpc", f"{where}: not the gRPC port"
            assert c.get("livenessProbe"), f"{where}: no liveness probe"
            resources = c.get("resources", {})
            assert resources.get("requests") and resources.get("limits", {}).get("memory"), f"{where}: resources"


def test_lookalike_replicas_use_the_health_service_and_their_settings_agree() -> None:
    (c,) = lookalike_deployment()["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["grpc"]["port"] == GRPC_PORT, "readiness is Kubernetes' gRPC probe (grpc.health.v1)"
    assert "grpc" not in c["livenessProbe"], "liveness must not restart replicas that wait for Milvus"
    env = env_list(c)
    for variable, port_name in (("LOOKALIKE_PORT", "grpc"), ("LOOKALIKE_HTTP_PORT", "http"),
                                ("LOOKALIKE_METRICS_PORT", "metrics")):  # fmt: skip
        assert int(env[variable]["value"]) == container_port(c, port_name)["containerPort"], variable
    assert env["LOOKALIKE_HOST"]["value"] == "0.0.0.0"
    assert env["LOOKALIKE_INDEX"]["value"] == "milvus"
    assert re.fullmatch(r"https?://[a-z0-9.-]+:19530", env["LOOKALIKE_MILVUS_URI"]["value"])
    assert env["LOOKALIKE_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert "LOOKALIKE_PERSIST" not in env, "with --index milvus the local log is not used; no --no-persist"
    token_dir = env["LOOKALIKE_TOKEN_FILE"]["value"].rsplit("/", 1)[0]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == token_dir]
    assert "subPath" not in mount, "a subPath mount never sees a rotated token file"
    assert c["resources"]["limits"]["cpu"] == c["resources"]["requests"]["cpu"]


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_services_hpa_and_pdbs_point_at_real_workloads() -> None:
    deployments = of_kind("Deployment")
    for deploy in deployments:
        assert selects(deploy["spec"]["selector"]["matchLabels"], deploy), "selector must match the pod labels"
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    for service in services.values():
        assert any(selects(service["spec"]["selector"], d) for d in deployments), service["metadata"]["name"]
    pods = services["lookalike-pods"]
    assert pods["spec"]["clusterIP"] == "None" and selects(pods["spec"]["selector"], lookalike_deployment())
    assert {p["port"] for p in pods["spec"]["ports"]} == {GRPC_PORT, HTTP_PORT, METRICS_PORT}
    front = services["lookalike"]
    assert {p["port"] for p in front["spec"]["ports"]} == {GRPC_PORT, HTTP_PORT}
    assert not selects(front["spec"]["selector"], lookalike_deployment()), "clients reach the replicas via Envoy"
    for service in services.values():
        for p in service["spec"]["ports"]:
            if p["port"] == GRPC_PORT:
                assert p.get("appProtocol") == "kubernetes.io/h2c", "gRPC port must declare HTTP/2 cleartext"
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "lookalike"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(
        selects(p["spec"]["selector"]["matchLabels"], lookalike_deployment()) for p in of_kind("PodDisruptionBudget")
    )


def test_configmaps_mounted_by_envoy_are_generated_from_files_here() -> None:
    generated = {g["name"]: g for g in kustomization()["configMapGenerator"]}
    for g in generated.values():
        for source in g["files"]:
            assert (DEPLOY / "k8s" / source.split("=", 1)[-1]).is_file(), source
    for deploy in of_kind("Deployment"):
        for volume in deploy["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in generated, f"volume {volume['name']}: unknown ConfigMap"
    (envoy,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "envoy"]
    (c,) = envoy["spec"]["template"]["spec"]["containers"]
    (mount,) = c["volumeMounts"]
    keys = [s.split("=", 1)[0] for s in generated["envoy-bootstrap"]["files"]]
    assert f"{mount['mountPath']}/{keys[0]}" in c["args"], "Envoy must read the generated bootstrap file"


def test_milvus_comes_from_the_official_chart_pinned_like_compose() -> None:
    text = (DEPLOY / "k8s" / "milvus-values.yaml").read_text()
    assert "https://zilliztech.github.io/milvus-helm/" in text
    assert re.search(r"helm upgrade --install milvus milvus/milvus --version \d+\.\d+\.\d+", text)
    (values,) = load_all(DEPLOY / "k8s" / "milvus-values.yaml")
    assert values["image"]["all"]["repository"] == "milvusdb/milvus"
    assert f"milvusdb/milvus:{values['image']['all']['tag']}" == compose()["services"]["milvus"]["image"]
    assert isinstance(values["cluster"]["enabled"], bool)
    service = lookalike_deployment_uri_host()
    assert service == "milvus", "LOOKALIKE_MILVUS_URI must name the Service of Helm release `milvus`"


def lookalike_deployment_uri_host() -> str:
    (c,) = lookalike_deployment()["spec"]["template"]["spec"]["containers"]
    return env_list(c)["LOOKALIKE_MILVUS_URI"]["value"].split("//")[1].split(":")[0].split(".")[0]


# -- Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_installs_the_server_with_cpu_torch() -> None:
    text = dockerfile()
    assert dockerfile_arg("PYTHON_IMAGE").startswith("python:3.11-slim")
    assert dockerfile_arg("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    assert re.search(r'ENTRYPOINT \["lookalike", "serve"\]', text)
    extras = set(dockerfile_arg("LOOKALIKE_EXTRAS").split(","))
    declared = pyproject()["project"]["optional-dependencies"]
    assert extras <= declared.keys(), f"unknown extras {extras - declared.keys()}"

    def closure(extra: str) -> list[str]:
        deps = []
        for dep in declared[extra]:
            nested = re.fullmatch(r"lookalike\[([a-z0-9_,-]+)\]", dep)
            deps += [d for e in nested.group(1).split(",") for d in closure(e)] if nested else [dep]
        return deps

    installed = {re.split(r"[<>=!\[; ]", d)[0].lower() for e in extras for d in closure(e)}
    for needed in ("torch", "fastapi", "uvicorn", "prometheus-client"):
        assert needed in installed, f"the image's extras {extras} do not install {needed}"
    if any("pymilvus" in d for deps in declared.values() for d in deps):
        assert "pymilvus" in installed, "the extra that carries pymilvus must be installed for --index milvus"
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE)[0].split()}
    assert exposed == {GRPC_PORT, HTTP_PORT, METRICS_PORT}
    env = dockerfile_env()
    assert {int(env[k]) for k in ("LOOKALIKE_PORT", "LOOKALIKE_HTTP_PORT", "LOOKALIKE_METRICS_PORT")} == exposed
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    copied = [src for line in re.findall(r"^COPY (?!--)(.+)$", text, re.MULTILINE) for src in line.split()[:-1]]
    assert "pyproject.toml" in copied and "ext" in copied
    for src in copied:
        assert {f"!{src}", f"!{src}/"} & set(ignore), f"deploy/Dockerfile.dockerignore leaves {src} out of the context"
