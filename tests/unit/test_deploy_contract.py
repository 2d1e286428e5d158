"""The deployment files against the code: docker-compose.yml, deploy/docker/Dockerfile, deploy/k8s/ and
docs/deployment.md must only use settings, pages, subcommands, topics and stages that really exist.

No Docker, no cluster, no broker: the files are parsed with PyYAML, and compared with ``streamrec.config.Settings``,
the ``@app.page`` routes of ``streamrec/stream/app.py``, ``streamrec.cli.build_parser()``, ``topics/topics.json`` and
``deploy/kafka``.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest

yaml = pytest.importorskip("yaml")

from streamrec import config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "k8s"
DOCS = ROOT / "docs" / "deployment.md"

SETTINGS_ENV = {config.env_name(f.name): f for f in dataclasses.fields(config.Settings)}
DEFAULTS = config.Settings()
WEB_PORT = DEFAULTS.web_port
STREAMREC_VAR = re.compile(r"\bSTREAMREC_[A-Z0-9_]*[A-Z0-9]\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
IMAGE_TARGETS = {"cpu", "gpu"}            # build targets whose ENTRYPOINT is `streamrec` (train: FROM cpu)
REQUIRED_SERVICES = {"kafka": None, "topics": None, "worker-cpu": "cpu", "worker-gpu": "gpu", "replay": "demo",
                     "tests": "test"}


# ------------------------------------------------------------------------------------------------- helpers

def interpolate(value, env: dict[str, str] | None = None):
    """Resolve compose ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` like docker compose, with ``env``
    standing for the shell (empty by default: the file's own defaults)."""
    env = env or {}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in (":?", "?"):
            assert name in env, f"${{{name}}} is required: {default}"
            return env[name]
        return env.get(name, "")

    return INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict, env: dict[str, str] | None = None) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {k: "" if v is None else str(interpolate(v, env)) for k, v in raw.items()}


def mounts_of(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's volumes (short syntax and long syntax)."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append((v.get("source", ""), v["target"], bool(v.get("read_only"))))
        else:
            parts = interpolate(v).split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def under(path: str, directory: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(directory) or PurePosixPath(directory) in PurePosixPath(path).parents


def streamrec_services(services: dict) -> dict[str, dict]:
    """Services that run the streamrec image with its `streamrec` ENTRYPOINT."""
    return {name: s for name, s in services.items()
            if (s.get("build") or {}).get("target") in IMAGE_TARGETS | {"train"} and "entrypoint" not in s}


@pytest.fixture(scope="module")
def parser():
    from streamrec.cli import build_parser
    return build_parser()


def parse(parser, argv: list[str], where: str):
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:   # argparse reports and exits on an unknown subcommand or flag
        pytest.fail(f"{where}: `streamrec {' '.join(argv)}` is not a valid command line (exit {exc.code})")


def app_pages() -> set[str]:
    pages = set(re.findall(r"""@app\.page\(\s*["']([^"']+)["']""", (ROOT / "streamrec" / "stream" / "app.py").read_text()))
    assert {"/health", "/ready", "/metrics"} <= pages, f"app.py pages changed: {pages}"
    return pages


def help_choices(field_name: str) -> set[str]:
    """Allowed values as the Settings help text lists them: ``"PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL only)"``."""
    text = re.sub(r"\([^)]*\)", "", SETTINGS_ENV[config.env_name(field_name)].metadata["help"])
    return {w.strip() for w in re.split(r",|\bor\b", text) if w.strip()}


def backends() -> set[str]:
    tree = ast.parse((ROOT / "streamrec" / "serve" / "lm.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BACKENDS" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("streamrec/serve/lm.py no longer defines BACKENDS")


def check_setting_values(env: dict[str, str], where: str) -> None:
    """Every STREAMREC_* value parses as its Settings field does, and enumerated ones are allowed values."""
    relevant = {k: v for k, v in env.items() if k.startswith(config.ENV_PREFIX)}
    unknown = set(relevant) - set(SETTINGS_ENV)
    assert not unknown, f"{where}: not Settings fields: {sorted(unknown)}"
    settings = config.Settings.from_env(relevant)    # raises on e.g. STREAMREC_WEB_PORT=abc
    assert settings.kafka_security_protocol in help_choices("kafka_security_protocol"), where
    if settings.kafka_sasl_mechanism:
        assert settings.kafka_sasl_mechanism in help_choices("kafka_sasl_mechanism"), where
    assert settings.processing_guarantee in help_choices("processing_guarantee"), where
    assert settings.scorer in help_choices("scorer"), where
    assert settings.backend in backends(), f"{where}: unknown backend {settings.backend!r}"


def topics_doc() -> dict:
    return json.loads((ROOT / "topics" / "topics.json").read_text())


def topic_partitions(logical: str) -> int:
    for t in topics_doc()["topics"]:
        if t["name"] == logical:
            return int(t["partitions"])
    raise AssertionError(f"{logical} is not declared in topics/topics.json")


# ---- Dockerfile

@dataclasses.dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]


def dockerfile_stages() -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())          # join continuation lines
    stages: dict[str, Stage] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            current = Stage(name=(m.group(2) or f"#{len(stages)}").lower(), base=m.group(1), instructions=[])
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((op, rest.strip()))
    return stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base.lower() in stages:
        chain.append(stages[chain[-1].base.lower()])
    return chain


def effective(stages: dict[str, Stage], name: str, op: str) -> str | None:
    """The last value of an instruction (USER, ENTRYPOINT, CMD, WORKDIR ...) a stage has, inherited ones included."""
    for stage in stage_chain(stages, name):
        values = [rest for o, rest in stage.instructions if o == op]
        if values:
            return values[-1]
    return None


def dockerfile_env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(stage_chain(stages, name)):
        for op, rest in stage.instructions:
            if op == "ENV":
                for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S*)", rest):
                    env[key] = value.strip('"')
    return env


# ---- Kubernetes

@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def k8s(kustomization) -> list[dict]:
    docs = []
    for resource in kustomization["resources"]:
        path = K8S / resource
        assert path.is_file(), f"kustomization.yaml lists {resource}, which does not exist"
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = resource
                docs.append(doc)
    return docs


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def statefulsets(k8s) -> dict[str, dict]:
    found = of_kind(k8s, "StatefulSet")
    assert found, "no StatefulSet in deploy/k8s"
    return found


def only_container(pod_spec: dict) -> dict:
    assert len(pod_spec["containers"]) == 1, "one container per streamrec pod expected"
    return pod_spec["containers"][0]


def pod_env(k8s, container: dict) -> dict[str, str]:
    """Environment of a container as the kubelet builds it: envFrom (ConfigMaps, Secrets), then env."""
    configmaps, secrets = of_kind(k8s, "ConfigMap"), of_kind(k8s, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in configmaps, f"envFrom names ConfigMap {name}, which deploy/k8s does not define"
            env.update({k: str(v) for k, v in configmaps[name]["data"].items()})
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            assert name in secrets, f"envFrom names Secret {name}, which deploy/k8s does not define"
            env.update({k: str(v) for k, v in secrets[name].get("stringData", {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of container {container['name']}"
    return named[port]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------------------ compose: basics

def test_compose_has_the_required_services_and_profiles(services):
    missing = set(REQUIRED_SERVICES) - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"
    for name, profile in REQUIRED_SERVICES.items():
        profiles = services[name].get("profiles") or []
        if profile is None:
            assert not profiles, f"{name} must always run (no profile), has {profiles}"
        else:
            assert profile in profiles, f"{name} must be in profile {profile!r}, has {profiles}"


def test_kafka_image_is_the_version_of_deploy_kafka(services):
    sh = re.search(r'^DEFAULT_VERSION="([^"]+)"', (ROOT / "deploy" / "kafka" / "kafka.sh").read_text(), re.M)
    pom = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", (ROOT / "deploy" / "kafka" / "pom.xml").read_text())
    assert sh and pom, "deploy/kafka no longer states its Kafka version where this test looks"
    assert sh.group(1) == pom.group(1), f"kafka.sh says {sh.group(1)}, pom.xml {pom.group(1)}"
    assert services["kafka"]["image"] == f"apache/kafka:{sh.group(1)}"


def test_kafka_is_a_single_kraft_node_reachable_as_kafka_9092(services):
    kafka = services["kafka"]
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert [v.split("@")[0] for v in voters] == [node_id], "the quorum must be this one node"
    listeners = dict(re.match(r"(\w+)://(.*)", item).groups() for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(re.match(r"(\w+)://(.*)", item).groups() for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    assert voters[0].split("@")[1].rsplit(":", 1)[1] == listeners[controller].rsplit(":", 1)[1]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # containers use kafka:9092; every streamrec service's default bootstrap must be an advertised listener
    assert "kafka:9092" in advertised.values()
    for name, service in services.items():
        bootstrap = env_of(service).get("STREAMREC_KAFKA_BOOTSTRAP")
        if bootstrap:
            assert set(bootstrap.split(",")) <= set(advertised.values()), f"{name}: {bootstrap} is not advertised"
    # the host listener is published on the port it advertises
    host_listeners = {name: addr for name, addr in advertised.items() if not addr.startswith("kafka:")}
    assert host_listeners, "no listener for clients on the host"
    published = {str(p).rsplit(":", 2)[-2]: str(p).rsplit(":", 1)[-1] for p in interpolate(kafka["ports"])}
    for name, addr in host_listeners.items():
        port = addr.rsplit(":", 1)[1]
        assert published.get(port) == listeners[name].rsplit(":", 1)[1], f"{name} advertises :{port}, not published"
    # one broker: internal topics at RF 1 / min ISR 1; topics come from topics/, never auto-created
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_MIN_INSYNC_REPLICAS"):
        assert env.get(key) == "1", f"{key} must be 1 on a single broker, is {env.get(key)!r}"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64url UUID"
    assert not cluster_id.startswith("-"), "kafka-storage reads a CLUSTER_ID starting with '-' as an option"
    assert any(t == env["KAFKA_LOG_DIRS"] for _, t, ro in mounts_of(kafka) if not ro), "Kafka data not on a volume"
    assert "/opt/kafka/bin/" in " ".join(kafka["healthcheck"]["test"])


def test_services_wait_for_the_broker_and_the_topics(services):
    for name in ("topics", "worker-cpu", "worker-gpu", "tests"):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy", name
    for name in ("worker-cpu", "worker-gpu", "replay"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
    for name in ("worker-cpu", "worker-gpu", "kafka"):
        assert services[name].get("restart") in ("unless-stopped", "always"), f"{name} needs a restart policy"


# --------------------------------------------------------------------------------- settings (all the files)

def test_every_streamrec_variable_is_a_settings_field(services, k8s):
    texts = {p.relative_to(ROOT): p.read_text() for p in [COMPOSE, DOCKERFILE, *sorted(K8S.glob("*.yaml"))]}
    # docs may also name the variables of the tooling scripts (deploy/kafka/kafka.sh, scripts/*.sh)
    tooling = set()
    for script in [ROOT / "deploy" / "kafka" / "kafka.sh", *sorted((ROOT / "scripts").glob("*.sh"))]:
        tooling |= set(STREAMREC_VAR.findall(script.read_text()))
    problems = []
    for path, text in texts.items():
        problems += [f"{path}: {v}" for v in sorted(set(STREAMREC_VAR.findall(text)) - set(SETTINGS_ENV))]
    if DOCS.is_file():
        problems += [f"docs/deployment.md: {v}"
                     for v in sorted(set(STREAMREC_VAR.findall(DOCS.read_text())) - config.env_names() - tooling)]
    assert not problems, "STREAMREC_* names that are not Settings fields:\n" + "\n".join(problems)


def test_compose_settings_parse(services):
    for name, service in services.items():
        env = env_of(service)
        if any(k.startswith(config.ENV_PREFIX) for k in env):
            check_setting_values(env, f"compose {name}")


def test_compose_workers_share_one_settings_anchor(services):
    cpu, gpu = env_of(services["worker-cpu"]), env_of(services["worker-gpu"])
    assert set(cpu) == set(gpu), f"CPU and GPU workers set different variables: {set(cpu) ^ set(gpu)}"
    # every service talking to Kafka gets the whole connection block (security included)
    kafka_vars = {k for k in SETTINGS_ENV if k.startswith("STREAMREC_KAFKA_")}
    for name in ("topics", "worker-cpu", "worker-gpu", "replay"):
        assert kafka_vars <= set(env_of(services[name])), f"{name} lacks {sorted(kafka_vars - set(env_of(services[name])))}"
    for name in ("worker-cpu", "worker-gpu"):
        env = env_of(services[name])
        assert env["STREAMREC_WEB_HOST"] == "0.0.0.0", f"{name} must listen on all interfaces in a container"


def test_k8s_settings_parse(k8s):
    for name, sts in statefulsets(k8s).items():
        container = only_container(sts["spec"]["template"]["spec"])
        check_setting_values(pod_env(k8s, container), f"StatefulSet {name}")
    for name, job in of_kind(k8s, "Job").items():
        check_setting_values(pod_env(k8s, only_container(job["spec"]["template"]["spec"])), f"Job {name}")
    for name, cm in of_kind(k8s, "ConfigMap").items():
        unknown = set(cm["data"]) - set(SETTINGS_ENV)
        assert not unknown, f"ConfigMap {name}: not Settings fields: {sorted(unknown)}"


def test_service_links_cannot_override_settings(k8s):
    """Kubernetes injects <SERVICE>_SERVICE_HOST / <SERVICE>_PORT... for every Service unless enableServiceLinks is
    false: a Service called `streamrec-web` would set STREAMREC_WEB_PORT=tcp://... and break the worker."""
    injected = set()
    for name, svc in of_kind(k8s, "Service").items():
        prefix = name.upper().replace("-", "_")
        injected |= {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
        for p in svc["spec"].get("ports", []):
            injected |= {f"{prefix}_SERVICE_PORT_{p.get('name', '').upper().replace('-', '_')}",
                         f"{prefix}_PORT_{p['port']}_{p.get('protocol', 'TCP')}"}
    clashes = injected & set(SETTINGS_ENV)
    for kind in ("StatefulSet", "Job"):
        for name, obj in of_kind(k8s, kind).items():
            if obj["spec"]["template"]["spec"].get("enableServiceLinks", True):
                assert not clashes, f"{kind} {name}: Service env links would set {sorted(clashes)}"


# ----------------------------------------------------------------------------------------------------- GPU

def test_gpu_worker_reserves_a_gpu_and_cpu_worker_does_not(services):
    def gpu_devices(service):
        devices = ((((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {})
                   .get("devices") or [])
        return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]

    assert gpu_devices(services["worker-gpu"]), "worker-gpu has no nvidia [gpu] device reservation"
    assert not gpu_devices(services["worker-cpu"])
    assert services["worker-gpu"]["build"]["target"] == "gpu" and services["worker-cpu"]["build"]["target"] == "cpu"
    assert env_of(services["worker-gpu"])["STREAMREC_BACKEND"].startswith("cuda-")
    assert not env_of(services["worker-cpu"])["STREAMREC_BACKEND"].startswith("cuda")


def test_gpu_statefulset_requests_a_gpu(k8s):
    sts = statefulsets(k8s)
    gpu = [s for s in sts.values()
           if "nvidia.com/gpu" in only_container(s["spec"]["template"]["spec"])["resources"].get("limits", {})]
    cpu = [s for s in sts.values() if s not in gpu]
    assert len(gpu) == 1 and cpu, "expected one GPU StatefulSet (nvidia.com/gpu limit) and CPU ones"
    pod = gpu[0]["spec"]["template"]["spec"]
    assert int(only_container(pod)["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "GPU pods need the toleration"
    assert pod.get("nodeSelector") or pod.get("affinity", {}).get("nodeAffinity"), "no GPU node selection hint"
    assert pod_env(k8s, only_container(pod))["STREAMREC_BACKEND"].startswith("cuda-")
    assert only_container(pod)["image"].split(":")[0].endswith("gpu")
    for s in cpu:
        assert not pod_env(k8s, only_container(s["spec"]["template"]["spec"]))["STREAMREC_BACKEND"].startswith("cuda")


# ------------------------------------------------------------------------------------------ pages and ports

def test_compose_health_checks_use_real_pages_and_ports(services):
    pages = app_pages()
    for name in ("worker-cpu", "worker-gpu"):
        service = services[name]
        port = int(env_of(service).get("STREAMREC_WEB_PORT") or WEB_PORT)
        urls = re.findall(r"https?://[^/'\"]+:(\d+)(/[^'\"\s)]*)", " ".join(service["healthcheck"]["test"]))
        assert urls, f"{name}: health check does not GET a URL"
        for url_port, path in urls:
            assert path == "/ready", f"{name}: the health check should use /ready, uses {path}"
            assert path in pages and int(url_port) == port, f"{name}: {url_port}{path} vs port {port}"
        container_ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in interpolate(service.get("ports", []))}
        assert container_ports == {port}, f"{name}: publishes {container_ports}, listens on {port}"


def test_k8s_probes_and_scrape_annotations_use_real_pages_and_ports(k8s):
    pages = app_pages()
    for name, sts in statefulsets(k8s).items():
        template = sts["spec"]["template"]
        container = only_container(template["spec"])
        port = int(pod_env(k8s, container).get("STREAMREC_WEB_PORT") or WEB_PORT)
        expected = {"livenessProbe": "/health", "readinessProbe": "/ready", "startupProbe": "/ready"}
        for probe, path in expected.items():
            assert probe in container, f"{name}: no {probe}"
            get = container[probe]["httpGet"]
            assert get["path"] == path and path in pages, f"{name}: {probe} on {get['path']}"
            assert port_number(container, get["port"]) == port, f"{name}: {probe} port != {port}"
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "allow >= 5 min for table recovery"
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true" and annotations["prometheus.io/path"] in pages
        assert int(annotations["prometheus.io/port"]) == port
    http = [s for s in of_kind(k8s, "Service").values() if s["spec"].get("clusterIP") != "None"]
    assert len(http) == 1, "one ClusterIP Service for HTTP expected"
    ann = http[0]["metadata"].get("annotations", {})
    assert ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") in pages


def test_k8s_services_and_budgets_select_the_workers(k8s):
    sts = statefulsets(k8s)
    services = of_kind(k8s, "Service")
    for name, s in sts.items():
        labels = s["spec"]["template"]["metadata"]["labels"]
        assert selects(s["spec"]["selector"]["matchLabels"], labels), f"{name}: selector does not match its pods"
        headless = services.get(s["spec"]["serviceName"])
        assert headless and headless["spec"].get("clusterIP") == "None", f"{name}: serviceName is not headless"
        assert selects(headless["spec"]["selector"], labels)
        container = only_container(s["spec"]["template"]["spec"])
        for p in headless["spec"]["ports"]:
            port_number(container, p.get("targetPort", p["port"]))
        pdbs = [p for p in of_kind(k8s, "PodDisruptionBudget").values()
                if selects(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(pdbs) == 1, f"{name}: expected exactly one PodDisruptionBudget, found {len(pdbs)}"
        # Faust's canonical URL (STREAMREC_WEB_ADVERTISED_HOST) must name the pod under its headless Service
        web_host = {e["name"]: e.get("value") for e in container.get("env", [])}.get("STREAMREC_WEB_ADVERTISED_HOST", "")
        assert f".{s['spec']['serviceName']}." in web_host, f"{name}: STREAMREC_WEB_ADVERTISED_HOST={web_host!r}"
    for svc_name, svc in services.items():
        matched = [n for n, s in sts.items() if selects(svc["spec"]["selector"], s["spec"]["template"]["metadata"]["labels"])]
        assert matched, f"Service {svc_name} selects no worker"


# ----------------------------------------------------------------------------------------------- volumes

def test_compose_state_and_model_dirs_are_volumes(services):
    for name in ("worker-cpu", "worker-gpu"):
        service = services[name]
        env, mounts = env_of(service), mounts_of(service)
        data_dir = env["STREAMREC_DATA_DIR"]
        assert any(t == data_dir and not ro for _, t, ro in mounts), f"{name}: {data_dir} is not a writable volume"
        assert data_dir.startswith("/"), f"{name}: relative data dir {data_dir}"
        for shell_env in ({}, {"STREAMREC_MODEL_DIR": "/models/demo"}):
            model_dir = env_of(service, shell_env)["STREAMREC_MODEL_DIR"]
            if model_dir:
                assert any(under(model_dir, t) for _, t, _ in mounts), f"{name}: {model_dir} is on no volume"
    # the demo model trained by `train` lands where the workers look for it
    train = parse_compose_command(services, "train")
    out = train.out
    train_mounts = {t: s for s, t, ro in mounts_of(services["train"]) if not ro}
    target = next((t for t in train_mounts if under(out, t)), None)
    assert target, f"train writes {out}, which is on no writable volume"
    for name in ("worker-cpu", "worker-gpu"):
        assert (train_mounts[target], target, True) in mounts_of(services[name]), f"{name} does not see {out}"


def parse_compose_command(services, name: str):
    from streamrec.cli import build_parser
    return parse(build_parser(), [str(a) for a in interpolate(services[name]["command"])], f"compose {name}")


def test_k8s_state_model_and_tls_paths_are_mounted(k8s):
    secrets = of_kind(k8s, "Secret")
    for name, sts in statefulsets(k8s).items():
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        container = only_container(pod)
        env = pod_env(k8s, container)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for m in mounts.values():
            assert m["name"] in claims or m["name"] in volumes, f"{name}: mount of undeclared volume {m['name']}"
        data = mounts.get(env["STREAMREC_DATA_DIR"])
        assert data and data["name"] in claims and not data.get("readOnly"), \
            f"{name}: STREAMREC_DATA_DIR={env['STREAMREC_DATA_DIR']} is not a volumeClaimTemplate mount"
        model_mount = next((m for p, m in mounts.items() if under(env["STREAMREC_MODEL_DIR"], p)), None)
        assert model_mount, f"{name}: STREAMREC_MODEL_DIR={env['STREAMREC_MODEL_DIR']} is not mounted"
        assert "persistentVolumeClaim" in volumes[model_mount["name"]] and model_mount.get("readOnly")
        for key in ("STREAMREC_KAFKA_SSL_CAFILE", "STREAMREC_KAFKA_SSL_CERTFILE", "STREAMREC_KAFKA_SSL_KEYFILE"):
            if env.get(key):
                mount = next((m for p, m in mounts.items() if under(env[key], p)), None)
                assert mount, f"{name}: {key}={env[key]} is not mounted"
                secret = volumes[mount["name"]]["secret"]["secretName"]
                assert PurePosixPath(env[key]).name in secrets[secret]["stringData"], f"{name}: {key} not in {secret}"
        ctx, cctx = pod["securityContext"], container["securityContext"]
        assert ctx["runAsNonRoot"] and ctx["runAsUser"] != 0 and ctx.get("fsGroup")
        assert cctx["readOnlyRootFilesystem"] and cctx["allowPrivilegeEscalation"] is False
        assert "/tmp" in mounts, f"{name}: a read-only root filesystem needs a writable /tmp"
        assert pod["terminationGracePeriodSeconds"] >= 60, f"{name}: Faust needs time to commit on SIGTERM"


def test_worker_replicas_do_not_exceed_interactions_partitions(k8s, services):
    partitions = topic_partitions("interactions")
    replicas = sum(s["spec"].get("replicas", 1) for s in statefulsets(k8s).values())
    assert 1 <= replicas <= partitions, f"{replicas} worker pods for {partitions} partitions of interactions"
    compose_workers = [n for n, s in services.items() if s.get("command") == ["worker"]]
    assert len(compose_workers) <= partitions


# ---------------------------------------------------------------------------------------------- commands

def test_compose_commands_are_real_subcommands(services, parser):
    commands = {}
    for name, service in streamrec_services(services).items():
        argv = [str(a) for a in interpolate(service.get("command") or ["worker"])]
        commands[name] = parse(parser, argv, f"compose {name}")
    assert commands["worker-cpu"].command == commands["worker-gpu"].command == "worker"
    assert (commands["topics"].command, commands["topics"].action) == ("topics", "apply")
    assert commands["replay"].command == "replay"
    # the demo files: replay reads what generate writes, on a volume both mount
    demo = parse(parser, [str(a) for a in interpolate(services["demo-data"]["command"])], "compose demo-data")
    assert demo.command == "generate" and commands["replay"].file == demo.out
    written_on = {t: s for s, t, _ in mounts_of(services["demo-data"])}
    target = next(t for t in written_on if under(demo.out, t))
    assert (written_on[target], target, True) in mounts_of(services["replay"])


def test_compose_tests_service_runs_the_integration_suite(services):
    tests = services["tests"]
    assert tests["build"]["target"] == "test"
    argv = [*tests["entrypoint"], *tests["command"]]
    assert argv[:3] == ["python", "-m", "pytest"]
    assert "-m" in argv[3:] and argv[argv.index("-m", 3) + 1] == "integration"
    paths = [a for a in argv[3:] if a.startswith("tests/")]
    assert paths and all((ROOT / p).exists() for p in paths)
    assert env_of(tests)["STREAMREC_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_k8s_commands_are_real_subcommands(k8s, parser):
    images = {i["name"] for i in yaml.safe_load((K8S / "kustomization.yaml").read_text()).get("images", [])}
    for kind in ("StatefulSet", "Job"):
        for name, obj in of_kind(k8s, kind).items():
            container = only_container(obj["spec"]["template"]["spec"])
            assert "command" not in container, f"{kind} {name}: keep the image ENTRYPOINT (streamrec)"
            args = parse(parser, container["args"], f"{kind} {name}")
            assert args.command == ("worker" if kind == "StatefulSet" else "topics"), f"{kind} {name}"
            assert container["image"].split(":")[0] in images, f"{kind} {name}: image not in kustomization images"
    assert any(parse(parser, only_container(j["spec"]["template"]["spec"])["args"], "job").action == "apply"
               for j in of_kind(k8s, "Job").values())


def test_docs_commands_are_real_subcommands(parser, services):
    if not DOCS.is_file():
        pytest.skip("docs/deployment.md not written yet")
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", DOCS.read_text(), re.S)
    lines = [line for block in blocks for line in re.sub(r"\\\n", " ", block).splitlines()]
    checked = 0
    for line in lines:
        line = line.split(" #")[0].strip()
        if line.startswith("#"):
            continue
        # `streamrec <subcommand> ...` (also after `kubectl exec ... --`)
        m = re.search(r"(?:^|\s|--\s)streamrec\s+([a-z].*)$", line)
        if m:
            argv = [a for a in shlex.split(m.group(1)) if a not in ("|", "&&")]
            argv = argv[: next((i for i, a in enumerate(argv) if a in ("|", "&&", ";")), len(argv))]
            parse(parser, argv, f"docs: {line}")
            checked += 1
        # `docker compose ... run --rm <service> <args>` for services running the streamrec image
        m = re.search(r"docker compose .*\brun\s+(?:--\S+\s+)*([a-z0-9-]+)(.*)$", line)
        if m and m.group(1) in streamrec_services(services) and m.group(2).strip():
            parse(parser, shlex.split(m.group(2)), f"docs: {line}")
            checked += 1
    assert checked >= 3, "docs/deployment.md shows too few streamrec command lines"


# ------------------------------------------------------------------------------------------------ topics

def test_topics_named_in_deployment_files_are_declared():
    logical = {t["name"] for t in topics_doc()["topics"]}
    declared = logical | {n.format(app_id=DEFAULTS.app_id) for n in logical}
    pattern = re.compile(r"`([A-Za-z0-9_.{}-]+)`\s+topics?\b|\btopics?\s+`([A-Za-z0-9_.{}-]+)`")
    files = [COMPOSE, *sorted(K8S.glob("*.yaml")), DOCKERFILE] + ([DOCS] if DOCS.is_file() else [])
    found = {}
    for path in files:
        for a, b in pattern.findall(path.read_text()):
            found.setdefault(a or b, set()).add(path.relative_to(ROOT).as_posix())
    found = {name: where for name, where in found.items() if not name.startswith("STREAMREC_")}
    assert found, "no topic is named anywhere (the replica comments should name `interactions`)"
    unknown = {name: sorted(where) for name, where in found.items() if name not in declared}
    assert not unknown, f"topics named in deployment files but not in topics/topics.json: {unknown}"


# ---------------------------------------------------------------------------------------------- Dockerfile

def test_dockerfile_has_the_compose_targets_and_runs_as_non_root(services):
    stages = dockerfile_stages()
    targets = {s["build"]["target"] for s in services.values() if "build" in s}
    assert targets >= {"cpu", "gpu", "test"} and targets <= set(stages), f"targets {targets}, stages {set(stages)}"
    for s in services.values():
        if "build" in s:
            assert s["build"]["dockerfile"] == DOCKERFILE.relative_to(ROOT).as_posix() and s["build"]["context"] == "."
    for target in targets:
        user = effective(stages, target, "USER")
        assert user and user.split(":")[0] not in ("root", "0"), f"stage {target} runs as {user!r}"
        uid = user.split(":")[0]
        created = " ".join(rest for st in stage_chain(stages, target) for op, rest in st.instructions if op == "RUN")
        assert re.search(rf"useradd\b[^;&]*--uid {uid}\b", created) or not uid.isdigit(), f"{target}: uid {uid}"
        assert uid == "10001"


def test_dockerfile_entrypoint_cmd_ports_and_healthcheck(parser):
    stages = dockerfile_stages()
    pages = app_pages()
    for target in IMAGE_TARGETS:
        assert json.loads(effective(stages, target, "ENTRYPOINT")) == ["streamrec"]
        parse(parser, json.loads(effective(stages, target, "CMD")), f"Dockerfile {target} CMD")
        env = dockerfile_env(stages, target)
        check_setting_values(env, f"Dockerfile {target}")
        port = int(env.get("STREAMREC_WEB_PORT", WEB_PORT))
        assert effective(stages, target, "EXPOSE") == str(port)
        health = effective(stages, target, "HEALTHCHECK")
        assert health and "/ready" in health and "/ready" in pages
        assert env.get("STREAMREC_WEB_HOST") == "0.0.0.0"
        created = " ".join(rest for st in stage_chain(stages, target) for op, rest in st.instructions if op == "RUN")
        for path in (env["STREAMREC_DATA_DIR"], "/models"):
            assert path in created.split("mkdir", 1)[1], f"{target}: {path} is not created (and chowned) in the image"


def test_dockerfile_matches_compose_and_k8s_paths(services, k8s):
    stages = dockerfile_stages()
    data_dir = dockerfile_env(stages, "cpu")["STREAMREC_DATA_DIR"]
    assert env_of(services["worker-cpu"])["STREAMREC_DATA_DIR"] == data_dir
    for sts in statefulsets(k8s).values():
        container = only_container(sts["spec"]["template"]["spec"])
        assert pod_env(k8s, container)["STREAMREC_DATA_DIR"] == data_dir
        assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
            effective(stages, "cpu", "USER").split(":")[0])
        assert container["ports"][0]["containerPort"] == int(dockerfile_env(stages, "cpu")["STREAMREC_WEB_PORT"])


def test_image_keeps_topics_where_settings_look(services, k8s):
    """Settings.topics_file defaults to REPO_ROOT/topics/topics.json and the JSON schemas are read from
    REPO_ROOT/topics/schemas: the image installs streamrec editable from /app, so REPO_ROOT is /app."""
    stages = dockerfile_stages()
    for builder in ("builder-cpu", "builder-gpu"):
        instructions = [i for st in stage_chain(stages, builder) for i in st.instructions]
        assert ("WORKDIR", "/app") in instructions
        assert any(op == "COPY" and rest.split()[0].rstrip("/") == "topics" for op, rest in instructions)
        assert any(op == "RUN" and "-e /app" in rest for op, rest in instructions), f"{builder}: not editable"
    for target in IMAGE_TARGETS:
        assert any(op == "COPY" and "/app" in rest.split()[-1]
                   for st in stage_chain(stages, target) for op, rest in st.instructions)
    # and nobody points STREAMREC_TOPICS_FILE elsewhere
    values = [env_of(s).get("STREAMREC_TOPICS_FILE") for s in services.values()]
    for sts in statefulsets(k8s).values():
        values.append(pod_env(k8s, only_container(sts["spec"]["template"]["spec"])).get("STREAMREC_TOPICS_FILE"))
    assert all(v in (None, "", "/app/topics/topics.json") for v in values), values


def test_dockerfile_copies_exist_and_are_not_dockerignored():
    ignore = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    ignore = [p for p in ignore if not p.startswith("!")]

    def ignored(path: str) -> bool:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(p, pat.rstrip("/")) for pat in ignore for p in prefixes)

    stages = dockerfile_stages()
    sources = []
    for stage in stages.values():
        for op, rest in stage.instructions:
            if op == "COPY" and "--from" not in rest:
                sources += rest.split()[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile COPYs {src}, which is not in the repository"
        assert not ignored(src.rstrip("/")), f".dockerignore excludes {src}, which the Dockerfile COPYs"
    for must in (".git", "var", "artifacts", "deploy/kafka/.cache"):
        assert ignored(must), f".dockerignore should exclude {must}"
    # the integration suite loads deploy/kafka/compat_check.py: the test image must have it
    if any("compat_check" in p.read_text() for p in (ROOT / "tests" / "integration").glob("*.py")):
        assert "deploy/kafka/compat_check.py" in sources and "tests/" in sources


# ----------------------------------------------------------------------------------------------- k8s misc

def test_k8s_manifests_are_namespace_agnostic_and_listed(k8s, kustomization):
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, f"not in kustomization.yaml: {on_disk - listed}; missing: {listed - on_disk}"
    kinds = {d["kind"] for d in k8s}
    assert {"ConfigMap", "Secret", "StatefulSet", "Service", "PodDisruptionBudget", "Job"} <= kinds
    for d in k8s:
        assert d.get("apiVersion") and d["metadata"].get("name"), d["__file__"]
        assert "namespace" not in d["metadata"], f"{d['__file__']}: {d['metadata']['name']} pins a namespace"
    for name, secret in of_kind(k8s, "Secret").items():
        assert "stringData" in secret and "data" not in secret, f"Secret {name}: use stringData"
        assert all("example" in str(v).lower() for v in secret["stringData"].values()), \
            f"Secret {name}: values must be clearly marked as examples"
    for name, sts in statefulsets(k8s).items():
        assert sts["spec"].get("volumeClaimTemplates"), f"{name}: no volumeClaimTemplates for RocksDB"


def test_cpu_image_has_no_torch_and_train_export_use_the_torch_image(services):
    """The lean cpu target installs only the base dependencies (no torch); training and export need the `torch`
    extra, so their services run the `train` target, which is the cpu image plus that extra."""
    stages = dockerfile_stages()

    def runs(name):
        return " ".join(rest for st in stage_chain(stages, name) for op, rest in st.instructions if op == "RUN")

    def copied_from(name):
        return {rest.split()[0].split("=", 1)[1] for st in stage_chain(stages, name) for op, rest in st.instructions
                if op == "COPY" and rest.startswith("--from=")}

    cpu_runs = runs("cpu") + runs("builder-cpu")
    assert "--extra" not in cpu_runs and "TORCH_INDEX_URL" not in cpu_runs, "the cpu image installs torch"
    assert "find_spec" in cpu_runs, "the cpu build no longer checks that torch is absent"
    assert copied_from("cpu") == {"builder-cpu"}
    assert "--extra torch" in runs("deps-train") and "TORCH_INDEX_URL" in runs("deps-train")
    assert "deps-train" in copied_from("train") and stages["test"].base == "train"
    for name in ("train", "export"):
        assert services[name]["build"]["target"] == "train", name
    for name in ("topics", "worker-cpu", "demo-data", "catalog", "replay"):
        assert services[name]["build"]["target"] == "cpu", name
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(extras["dependencies"])
    assert "torch" not in base and "transformers" not in base
    assert any(d.startswith("torch") for d in extras["optional-dependencies"]["torch"])


def test_kafka_sh_never_draws_a_cluster_id_that_starts_with_a_dash():
    """kafka.sh draws a random cluster id per data dir; one starting with '-' (1 draw in 64) made StorageTool's
    parser fail CI. Run the script's own drawing lines many times."""
    import subprocess

    script = (ROOT / "deploy" / "kafka" / "kafka.sh").read_text()
    draw = re.search(r'^  local cluster_id="-"\n.*?^  done\n', script, re.S | re.M)
    assert draw, "kafka.sh's cluster id drawing not found"
    loop = f'for i in $(seq 400); do\n{draw.group(0).replace("local ", "")}  echo "$cluster_id"\ndone'
    ids = subprocess.run(["bash", "-c", loop], check=True, capture_output=True, text=True).stdout.split()
    assert len(ids) == 400 and len(set(ids)) == 400
    for cluster_id in ids:
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
