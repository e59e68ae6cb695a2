"""The scale-out manifests (infra/deploy/: docker compose, KubeRay, cluster config, Dockerfile) wire exactly what
srcompress reads. Nothing is started: there is no container runtime here. The files are parsed and cross-checked
against the code, the libraries and each other (docs/deploy.md, "Topology"):

1. every variable set for a container that runs srcompress code is one srcompress reads (derived from the package
   source) or a named library variable it relies on; server containers set only their servers' variables;
2. ports and host names agree: MLflow, MinIO, Prefect and the Ray head listen where the URIs point, and every host
   is a compose service and a Kubernetes Service whose port reaches a container port;
3. infra/deploy/cluster.yaml validates with ``srcompress.config.load_config`` and its store is s3:// (the validator
   refuses a Ray address with a local store);
4. the Prefect worker serves prefect.yaml's work pool from prefect.yaml's checkout;
5. no literal secret: secret-looking variables are ``${VAR}`` references (compose) or ``secretKeyRef`` (Kubernetes),
   and every Secret the manifests read is one docs/deploy.md tells you to create;
6. the compose, RayCluster, RayJob and MLflow images are one image, built from pyproject's pins.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import tomllib
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
K8S = [d for p in sorted((DEPLOY / "kuberay").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
CLUSTER_YAML = DEPLOY / "cluster.yaml"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())

# Compose services and Kubernetes containers that run srcompress code (the flow driver and the Ray nodes, whose
# actors and DeepSpeed ranks open the store and MLflow themselves); the others run servers.
COMPOSE_RUNNERS = {"prefect-worker", "prefect-worker-cluster", "ray-head", "ray-worker"}
K8S_RUNNERS = {"ray-head", "ray-worker"}  # RayCluster containers; the RayJob's entrypoint runs on the head

# Library variables srcompress relies on without reading them itself (its own reads are derived below).
LIBRARY_ENV = {
    "MLFLOW_TRACKING_URI": "MLflow client: tracking.uri's default (infra/tracking.py)",
    "MLFLOW_S3_ENDPOINT_URL": "MLflow's S3 artifact client (set by the tracker from store.endpoint_url)",
    "PREFECT_API_URL": "Prefect client: a Prefect server instead of the ephemeral local API",
    "RAY_ADDRESS": "ray.init: the cluster joined when run.ray_address is 'auto'",
}
# The standard AWS chain (credentials, region, profile), as botocore names it.
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES as _BOTO_VARS  # noqa: E402
from botocore.credentials import EnvProvider  # noqa: E402

AWS_ENV = {EnvProvider.ACCESS_KEY, EnvProvider.SECRET_KEY, *EnvProvider.TOKENS}
for _key in ("region", "profile"):
    _names = _BOTO_VARS[_key][1]
    AWS_ENV |= {_names} if isinstance(_names, str) else set(_names)
# Variables of third-party server images (their documentation), by image name.
IMAGE_ENV = {"postgres": {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "PGDATA"},
             "minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}}
ENV_NAME = re.compile(r"^(?:SRCOMPRESS|MLFLOW|PREFECT|RAY|HF|AWS|TORCH)_[A-Z0-9_]+$")
REFERENCE = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::?\?[^}]*)?\}$")  # ${VAR} / ${VAR:?message}: no default


# -- helpers -----------------------------------------------------------------------------------------------------
def package_env_names() -> set[str]:
    """Every environment variable the package reads or sets: string constants shaped like one in the modules that
    touch ``os.environ`` (``environ.get``, ``getenv``, ``setdefault``, the defaults ``configure_prefect`` applies)."""
    names = set()
    for layer in ("srcompress", "flows", "tasks", "models", "infra"):
        for path in (ROOT / layer).rglob("*.py"):
            text = path.read_text()
            if "environ" in text or "getenv" in text:
                names |= {n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant)
                          and isinstance(n.value, str) and ENV_NAME.match(n.value)}
    return names


def prefect_yaml_env_names() -> set[str]:
    """Variables prefect.yaml's templates read on the worker (``{{ $VAR }}``)."""
    return set(re.findall(r"\{\{\s*\$([A-Z_][A-Z0-9_]*)\s*\}\}", (ROOT / "prefect.yaml").read_text()))


def dockerfile_env() -> dict[str, str]:
    env = {}
    for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", DOCKERFILE, re.M):
        for item in shlex.split(block.replace("\\\n", " ")):
            key, _, value = item.partition("=")
            env[key] = value
    return env


SRCOMPRESS_ENV = package_env_names() | prefect_yaml_env_names() | set(LIBRARY_ENV) | AWS_ENV


def command(service: dict) -> str:
    """A compose service's command (or entrypoint) as the container's shell sees it (``$$`` → ``$``)."""
    parts = [service.get(k) for k in ("entrypoint", "command") if service.get(k)]
    text = " ".join(" ".join(p) if isinstance(p, list) else p for p in parts)
    return text.replace("$$", "$")


def compose_env(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def default_of(value: str) -> str:
    """``${VAR:-default}`` → default (compose interpolation when VAR is unset); plain values unchanged."""
    m = re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:?-(.*)\}", value)
    return m.group(1) if m else value


def k8s(kind: str) -> list[dict]:
    return [d for d in K8S if d["kind"] == kind]


def k8s_pods() -> list[tuple[str, dict, dict]]:
    """(owner name, pod labels, pod spec) of every pod template in the Kubernetes manifests."""
    pods = []
    for rc in k8s("RayCluster"):
        name = rc["metadata"]["name"]
        head = rc["spec"]["headGroupSpec"]["template"]
        pods.append((name, {"ray.io/cluster": name, "ray.io/node-type": "head"}, head["spec"]))
        for group in rc["spec"]["workerGroupSpecs"]:
            pods.append((name, {"ray.io/cluster": name, "ray.io/node-type": "worker"}, group["template"]["spec"]))
    for job in k8s("RayJob"):
        pods.append((job["metadata"]["name"], {}, job["spec"]["submitterPodTemplate"]["spec"]))
    for kind in ("Deployment", "Job"):
        for d in k8s(kind):
            tpl = d["spec"]["template"]
            pods.append((d["metadata"]["name"], tpl.get("metadata", {}).get("labels", {}), tpl["spec"]))
    return pods


def k8s_containers() -> list[dict]:
    return [c for _, _, spec in k8s_pods() for c in spec["containers"]]


def k8s_env(container: dict) -> dict[str, object]:
    """name → literal value, or ("secret", secret name, key)."""
    out = {}
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        out[e["name"]] = ("secret", ref["name"], ref["key"]) if ref else e.get("value")
    return out


def k8s_services() -> dict[str, dict]:
    return {s["metadata"]["name"]: s for s in k8s("Service")}


def flag(text: str, name: str) -> str | None:
    m = re.search(rf"{re.escape(name)}[ =]\"?([^\s\"]+)", text)
    return m.group(1) if m else None


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname, parts.port


def srcompress_envs() -> list[tuple[str, dict]]:
    """(where, env) of every container that runs srcompress code; compose envs as written (``${…}`` kept)."""
    envs = [(f"compose {n}", compose_env(n)) for n in sorted(COMPOSE_RUNNERS)]
    envs += [(f"k8s {c['name']}", k8s_env(c)) for c in k8s_containers() if c["name"] in K8S_RUNNERS]
    return envs


def cluster_config(monkeypatch):
    from srcompress.config import load_config

    monkeypatch.delenv("SRCOMPRESS_STORE_URI", raising=False)  # the file, not this shell, must make it s3://
    return load_config(CLUSTER_YAML)


# -- 1. variables ------------------------------------------------------------------------------------------------
def test_the_derived_variable_list_holds_what_the_docs_promise():
    """The derivation itself works: the variables README / architecture.md document are found in the code."""
    derived = package_env_names()
    for name in ("SRCOMPRESS_STORE_URI", "SRCOMPRESS_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "SRCOMPRESS_ASSETS",
                 "SRCOMPRESS_BASICSR_SDIST", "RAY_AUTH_MODE", "HF_HUB_OFFLINE"):
        assert name in derived, name
    assert prefect_yaml_env_names() == {"SRCOMPRESS_CHECKOUT"}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_SERVER_ALLOWED_HOSTS"} <= mlflow_env_names()
    assert {"PREFECT_API_URL", "PREFECT_HOME"} <= _prefect_setting_names()


def test_srcompress_containers_set_only_variables_srcompress_reads():
    sources = srcompress_envs() + [("Dockerfile ENV", dockerfile_env())]
    for where, env in sources:
        unknown = sorted(set(env) - SRCOMPRESS_ENV)
        assert not unknown, f"{where} sets {unknown}, which srcompress never reads"
    for where, env in srcompress_envs():
        missing = {"MLFLOW_TRACKING_URI", "SRCOMPRESS_STORE_URI", "SRCOMPRESS_S3_ENDPOINT_URL",
                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_MODE"} - set(env)
        assert not missing, f"{where} lacks {sorted(missing)}"
    # the flow driver: a Prefect server, and the checkout prefect.yaml's pull step changes into (image ENV)
    assert "PREFECT_API_URL" in compose_env("prefect-worker")
    assert "SRCOMPRESS_CHECKOUT" in dockerfile_env()
    # one auth mode on every Ray node and driver (srcompress defaults it to disabled only where unset)
    modes = {str(env["RAY_AUTH_MODE"]) for _, env in srcompress_envs()}
    assert modes == {"disabled"}, modes


def _prefect_setting_names() -> set[str]:
    import prefect.settings

    try:
        from prefect.settings.legacy import _get_valid_setting_names

        return set(_get_valid_setting_names(prefect.settings.Settings))
    except ImportError:  # pragma: no cover - older layout
        return {n for n in dir(prefect.settings) if n.startswith("PREFECT_")}


def test_server_containers_set_only_their_servers_variables():
    mlflow_names, prefect_names = mlflow_env_names(), _prefect_setting_names()

    def check(where: str, env: dict, cmd: str, image: str) -> None:
        for name in env:
            if name.startswith("MLFLOW_"):
                ok = name in mlflow_names
            elif name.startswith("PREFECT_"):
                ok = name in prefect_names
            elif name.startswith("AWS_"):
                ok = name in AWS_ENV
            else:  # the image's documented variables, or one the container's own command expands
                ok = name in IMAGE_ENV.get(image.split(":")[0], set()) or bool(
                    re.search(rf"\$\{{?{name}\b|\$\({name}\)", cmd))
            assert ok, f"{where} sets {name}, which neither its server nor its command reads"

    for name, svc in SERVICES.items():
        if name not in COMPOSE_RUNNERS:
            check(f"compose {name}", compose_env(name), command(svc), default_of(svc["image"]))
    for c in k8s_containers():
        if c["name"] not in K8S_RUNNERS:
            cmd = " ".join(c.get("command", []) + c.get("args", []))
            check(f"k8s {c['name']}", k8s_env(c), cmd, c["image"])


# -- 2. ports and host names -------------------------------------------------------------------------------------
def test_compose_ports_and_hosts_agree():
    mlflow_cmd, minio_cmd = command(SERVICES["mlflow"]), command(SERVICES["minio"])
    mlflow_port = int(flag(mlflow_cmd, "--port"))
    minio_port = int(flag(minio_cmd, "--address").lstrip(":"))
    prefect_port = int(flag(command(SERVICES["prefect-server"]), "--port"))
    ray_port = int(flag(command(SERVICES["ray-head"]), "--port"))
    assert "ray start --head" in command(SERVICES["ray-head"])
    ray_head = f"ray-head:{ray_port}"

    for name in COMPOSE_RUNNERS:
        env = compose_env(name)
        assert host_port(env["MLFLOW_TRACKING_URI"]) == ("mlflow", mlflow_port), name
        assert host_port(env["SRCOMPRESS_S3_ENDPOINT_URL"]) == ("minio", minio_port), name
    worker = compose_env("prefect-worker")
    assert host_port(worker["PREFECT_API_URL"]) == ("prefect-server", prefect_port)
    assert urlsplit(worker["PREFECT_API_URL"]).path == "/api"
    assert worker["RAY_ADDRESS"] == ray_head
    for name in ("ray-worker", "prefect-worker"):  # both join the head's GCS
        assert flag(command(SERVICES[name]), "--address") == ray_head, name
    assert "--pool" in command(SERVICES["prefect-worker"])

    # the MLflow server: its S3 endpoint is MinIO's, its database is the postgres service
    assert compose_env("mlflow")["MLFLOW_S3_ENDPOINT_URL"] == compose_env("ray-head")["SRCOMPRESS_S3_ENDPOINT_URL"]
    assert host_port(flag(mlflow_cmd, "--backend-store-uri")) == ("postgres", 5432)
    bucket_alias = re.search(r"mc alias set \S+ (\S+)", command(SERVICES["create-bucket"])).group(1)
    assert host_port(bucket_alias) == ("minio", minio_port)

    # every URL any service is given names a compose service
    hosts = set(SERVICES) | {"localhost", "0.0.0.0", "127.0.0.1"}
    for name, svc in SERVICES.items():
        text = command(svc) + " " + " ".join(compose_env(name).values())
        for scheme, host in re.findall(r"\b(https?|postgresql|tcp)://(?:[^@/\s\"]+@)?([A-Za-z0-9.-]+)", text):
            assert host in hosts, f"compose {name}: {scheme}://{host} is not a compose service"


def _mlflow_source(module: str) -> str:
    """A module of the installed MLflow, read rather than imported (importing mlflow costs seconds)."""
    return (Path(find_spec("mlflow").submodule_search_locations[0]) / f"{module}.py").read_text()


def mlflow_env_names() -> set[str]:
    """The variables MLflow declares (mlflow/environment_variables.py)."""
    return set(re.findall(r"EnvironmentVariable\(\s*\"(MLFLOW_[A-Z0-9_]+)\"", _mlflow_source("environment_variables")))


def _mlflow_admits(allowed: str, host_header: str) -> bool:
    """MLflow's own ``is_allowed_host_header`` (mlflow/server/security_utils.py), compiled from its source with
    the module's other top-level statements (its helpers and constants change between releases: MLflow 3.18
    added ``_matches_host_pattern``); imports from the rest of MLflow are left out, and so is any statement
    that needs them."""
    tree = ast.parse(_mlflow_source("server/security_utils"))
    namespace: dict = {"fnmatch": fnmatch}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlflow"):
            continue
        try:
            exec(compile(ast.Module(body=[node], type_ignores=[]), "security_utils.py", "exec"), namespace)
        except (NameError, ImportError):
            continue  # a statement that reads the rest of MLflow: not part of the host check
    return namespace["is_allowed_host_header"]([h.strip() for h in allowed.split(",")], host_header)


def test_mlflow_server_admits_the_host_name_clients_use():
    """MLflow 3 answers 403 to a Host header outside --allowed-hosts (default: localhost and private IPs)."""
    for where, cmd in [("compose", command(SERVICES["mlflow"])),
                       ("k8s", " ".join(next(c for c in k8s_containers() if c["name"] == "mlflow")["command"]))]:
        allowed = flag(cmd, "--allowed-hosts")
        assert allowed, f"{where} mlflow server has no --allowed-hosts"
        for _, env in srcompress_envs():
            parts = urlsplit(env["MLFLOW_TRACKING_URI"])
            assert _mlflow_admits(allowed, parts.netloc), f"{where}: Host {parts.netloc} is refused"
        assert not _mlflow_admits(allowed, "evil.example:5000")


def _pods_behind(service: dict) -> list[dict]:
    selector = service["spec"]["selector"]
    return [spec for _, labels, spec in k8s_pods() if labels and selector.items() <= labels.items()]


def test_k8s_services_reach_container_ports_and_urls_name_services():
    services = k8s_services()
    for name, svc in services.items():
        pods = _pods_behind(svc)
        assert pods, f"Service {name} selects no pod of these manifests"
        container_ports = {p["containerPort"] for spec in pods for c in spec["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in container_ports, f"Service {name}: {port}"

    def service_port(url: str) -> None:
        host, port = host_port(url)
        assert host in services, f"{url}: no Service {host}"
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}, f"{url}: Service {host} has no {port}"

    for where, env in srcompress_envs():
        if where.startswith("k8s"):
            service_port(env["MLFLOW_TRACKING_URI"])
            service_port(env["SRCOMPRESS_S3_ENDPOINT_URL"])
    mlflow = next(c for c in k8s_containers() if c["name"] == "mlflow")
    cmd = " ".join(mlflow["command"])
    assert int(flag(cmd, "--port")) in {p["containerPort"] for p in mlflow["ports"]}
    service_port("postgresql://" + flag(cmd, "--backend-store-uri").split("@", 1)[1])
    service_port(k8s_env(mlflow)["MLFLOW_S3_ENDPOINT_URL"])
    minio = next(c for c in k8s_containers() if c["name"] == "minio")
    assert int(flag(" ".join(minio["args"]), "--address").lstrip(":")) in {p["containerPort"] for p in minio["ports"]}

    # the Ray head: GCS port of rayStartParams (KubeRay's default 6379) = container port = ray-head Service
    (rc,) = k8s("RayCluster")
    head = rc["spec"]["headGroupSpec"]
    gcs = int(head["rayStartParams"].get("port", 6379))
    (head_container,) = head["template"]["spec"]["containers"]
    assert {"name": "gcs-server", "containerPort": gcs} in head_container["ports"]
    assert services["ray-head"]["spec"]["selector"] == {"ray.io/cluster": rc["metadata"]["name"],
                                                        "ray.io/node-type": "head"}
    service_port(f"ray-head:{gcs}")


# -- 3. the cluster config ---------------------------------------------------------------------------------------
def test_cluster_config_validates_and_matches_the_wiring(monkeypatch):
    from srcompress.config import load_config
    from srcompress.infra.config import ConfigError

    cfg = cluster_config(monkeypatch)
    assert cfg.store.uri.startswith("s3://")
    ray_port = int(flag(command(SERVICES["ray-head"]), "--port"))
    assert cfg.run.ray_address == f"ray-head:{ray_port}" == compose_env("prefect-worker")["RAY_ADDRESS"]
    for where, env in srcompress_envs():
        assert cfg.tracking.uri == env["MLFLOW_TRACKING_URI"], where
        assert cfg.store.endpoint_url == env["SRCOMPRESS_S3_ENDPOINT_URL"], where
        assert cfg.store.uri == env["SRCOMPRESS_STORE_URI"], where
    # the bucket the store and MLflow write into is the one the bucket jobs create
    bucket = urlsplit(cfg.store.uri).netloc
    job = next(c for c in k8s_containers() if c["name"] == "create-bucket")
    for cmd in (command(SERVICES["create-bucket"]), " ".join(job["command"])):
        assert re.search(rf"mc mb --ignore-existing \S+/{bucket}\b", cmd), cmd
    mlflow_k8s = " ".join(next(c for c in k8s_containers() if c["name"] == "mlflow")["command"])
    for cmd in (command(SERVICES["mlflow"]), mlflow_k8s):
        assert urlsplit(flag(cmd, "--artifacts-destination")).netloc == bucket
    # the validator is what keeps a Ray address off a local store: without store.uri the file is refused
    with pytest.raises(ConfigError, match="run.ray_address"):
        load_config(CLUSTER_YAML, ["store.uri=null"])


# -- 4. Prefect --------------------------------------------------------------------------------------------------
def test_prefect_workers_serve_every_pool_of_prefect_yaml_from_its_checkout():
    pools = {d["work_pool"]["name"] for d in PREFECT_YAML["deployments"]}
    served = {}
    for name in ("prefect-worker", "prefect-worker-cluster"):
        cmd = command(SERVICES[name])
        assert flag(cmd, "--type") == "process" and "ray start --address=ray-head:6379" in cmd, name
        served[flag(cmd, "--pool")] = name
    assert set(served) == pools, (served, pools)
    checkout = dockerfile_env()["SRCOMPRESS_CHECKOUT"]
    assert re.search(rf"^WORKDIR {re.escape(checkout)}$", DOCKERFILE, re.M), "WORKDIR is not the checkout"
    for d in PREFECT_YAML["deployments"]:  # the entrypoints exist in the checkout the image copies
        assert (ROOT / d["entrypoint"].split(":")[0]).is_file(), d["entrypoint"]


def test_rayjob_runs_the_dag_on_the_raycluster(monkeypatch):
    (rc,), (job,) = k8s("RayCluster"), k8s("RayJob")
    assert rc["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    entry = job["spec"]["entrypoint"]
    m = re.fullmatch(r"cd (\S+) && (srcompress run .*)", entry.strip())
    assert m and m.group(1) == dockerfile_env()["SRCOMPRESS_CHECKOUT"], entry
    assert ROOT / flag(m.group(2), "--config") == CLUSTER_YAML
    cluster_config(monkeypatch)


# -- 5. secrets --------------------------------------------------------------------------------------------------
def _looks_secret(name: str) -> bool:
    from srcompress.infra.config import redact

    return redact({name: "x"})[name] == "***"  # srcompress's own rule for secret-looking keys


def _strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_no_literal_secrets_in_the_manifests():
    from srcompress.infra.config import redact_text

    for name in SERVICES:
        for key, value in compose_env(name).items():
            if _looks_secret(key):
                assert REFERENCE.match(value), f"compose {name}: {key} must be a ${{VAR}} reference without default"
    for c in k8s_containers():
        for key, value in k8s_env(c).items():
            if _looks_secret(key):
                assert isinstance(value, tuple) and value[0] == "secret", f"k8s {c['name']}: {key} needs secretKeyRef"
    assert not k8s("Secret"), "Secrets are created with kubectl (docs/deploy.md), never kept in a manifest"

    # credentials inside URLs: only variable references, and srcompress's redaction masks them when logged
    documents = [COMPOSE, *K8S, yaml.safe_load(CLUSTER_YAML.read_text())]
    for text in (s for doc in documents for s in _strings(doc)):
        for userinfo in re.findall(r"[a-z][a-z0-9+.-]*://([^@/\s\"']+)@", text):
            password = userinfo.partition(":")[2]
            assert re.fullmatch(r"\$\$?\{[A-Z_]+\}|\$\([A-Z_]+\)", password), f"literal password in {text!r}"
            assert userinfo not in redact_text(text.replace("$$", "$")), text

    # nothing that looks like a key in any file under infra/deploy
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env"):
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
        for word in re.findall(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])", text):  # AWS secret shape
            assert not (re.search(r"[0-9]", word) and re.search(r"[A-Z]", word) and re.search(r"[a-z]", word)), path
        assert "minioadmin" not in text, f"{path}: MinIO's default credentials"


def test_env_example_names_every_required_variable_and_holds_no_value():
    example = dict(line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert all(v == "" for v in example.values()), "env.example must not carry values"
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):?\?", text))
    assert required == set(example), (required, set(example))
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_every_secret_the_manifests_read_is_one_the_docs_create():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    created = set()
    for name, args in re.findall(r"kubectl create secret generic (\S+)((?: --from-literal=[A-Z_]+=\S+)+)", docs):
        created |= {(name, key) for key in re.findall(r"--from-literal=([A-Z_]+)=", args)}
    used = {v[1:] for c in k8s_containers() for v in k8s_env(c).values() if isinstance(v, tuple)}
    assert used and used <= created, sorted(used - created)


# -- 6. one image ------------------------------------------------------------------------------------------------
def test_one_image_everywhere_built_from_pyprojects_pins():
    built = {name: svc for name, svc in SERVICES.items() if "build" in svc}
    images = {default_of(svc["image"]) for svc in built.values()}
    assert len(images) == 1, images
    (image,) = images
    assert set(built) == COMPOSE_RUNNERS | {"mlflow", "prefect-server"}
    for svc in built.values():
        assert (DEPLOY / svc["build"]["context"]).resolve() == ROOT
        assert (ROOT / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    ours = [c for c in k8s_containers() if c["name"] in K8S_RUNNERS | {"ray-job-submitter", "mlflow"}]
    assert len(ours) == 4 and {c["image"] for c in ours} == {image}
    assert image.rpartition(":")[2] == PYPROJECT["project"]["version"]

    # the Dockerfile installs the package with its pins (one torch), Ray's head extras, KubeRay's probe tool
    python = re.search(r"^FROM python:(\d+\.\d+)", DOCKERFILE, re.M).group(1)
    assert Version(python) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    install = re.search(r"pip install (.*)", DOCKERFILE).group(1).rstrip(" \\")
    assert shlex.split(install)[:2] == ["-e", "."] and "torch" not in install  # editable: see the Dockerfile
    ray_spec = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))
    assert f'"ray[default]{ray_spec.split("]", 1)[1]}"' in install
    assert re.search(r"apt-get install .*\bwget\b", DOCKERFILE)
    (rc,) = k8s("RayCluster")
    assert Version(rc["spec"]["rayVersion"]) in SpecifierSet(ray_spec.split("]", 1)[1])


# -- docs --------------------------------------------------------------------------------------------------------
def test_deploy_docs_name_files_that_exist():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "## Topology" in docs
    for path in set(re.findall(r"infra/deploy/[\w./-]+[\w]", docs)) - {"infra/deploy/.env"}:  # .env: yours
        assert (ROOT / path).exists(), path
