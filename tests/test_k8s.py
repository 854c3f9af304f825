"""k8s/: every manifest validated offline against a real schema, and the dashboard against /metrics.

What validates what (nothing is ever skipped; a missing schema or an unknown kind FAILS):
- Kubernetes' own kinds (Secret, PersistentVolumeClaim, NetworkPolicy, and the pod templates and
  object metadata embedded in the RayService): `kubernetes-validate` (PyPI; bundles the upstream OpenAPI schemas,
  works offline) in strict mode, so unknown fields fail. It raises for any kind it has no schema
  for, which is how an unknown or misspelled kind fails here.
- RayService: the KubeRay CRD in ../shared/schemas/ (openAPIV3Schema of the manifest's apiVersion),
  made strict the way the API server's strict field validation is (unknown fields fail).
- ServiceMonitor: no registry package ships the prometheus-operator CRD schemas (kubernetes-validate
  has core kinds only; check-jsonschema's vendored catalog is CI-config formats only), so it is
  checked against SERVICE_MONITOR_SCHEMA below: a strict, hand-transcribed subset of the upstream
  CRD's openAPIV3Schema covering the fields we use.
- The serve config (k8s/serve-config.yaml == the RayService's serveConfigV2): Ray's own
  `ServeDeploySchema`.
- Grafana dashboard: every metric name a query uses must be in the documented list below and in
  the live service's /metrics (fixture `live_metrics_text`, from tests/conftest.py).
- Ray's own endpoints: the RayService turns on Ray token auth from a Secret defined here, and the
  NetworkPolicy is evaluated (a small evaluator of its semantics, below) against the labels KubeRay
  puts on pods, for every source that matters and every Ray port.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SERVE_CONFIG = K8S / "serve-config.yaml"
DASHBOARD = K8S / "grafana-dashboard.json"
# Files in k8s/ that are not Kubernetes manifests.
NOT_MANIFESTS = {SERVE_CONFIG.name}
# Oldest Kubernetes we support, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SCHEMAS_ENV = "MMRM_SHARED_SCHEMAS"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --------------------------------------------------------------------------------------------------
# Loading


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p.name not in NOT_MANIFESTS)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}#{i}", d) for p in manifest_files() for i, d in enumerate(_load_yaml_docs(p))]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in manifests() if d.get("kind") == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''} in k8s/, found {len(found)}"
    return found[0]


# The Secret the pods read the scoring API's token from, and the one holding Ray's cluster token.
API_TOKEN_SECRET = "mmrm-api-token"
RAY_TOKEN_SECRET = "mmrm-ray-token"


VENDORED_SCHEMAS = K8S / "schemas"


def shared_schema_dirs() -> list[Path]:
    """The project's shared copy: shared/ in the checkout or beside it (../shared)."""
    return [base / "shared" / "schemas" for base in (REPO, *REPO.parents)]


def schema_dir_candidates() -> list[Path]:
    env = os.environ.get(SCHEMAS_ENV)
    out = [Path(env)] if env else []
    # The vendored copy first (a clean clone has it), then the shared copy.
    return [*out, VENDORED_SCHEMAS, *shared_schema_dirs()]


def find_schemas_dir(candidates: Iterable[Path]) -> Path:
    candidates = list(candidates)
    for c in candidates:
        if (c / "ray.io_rayservices.yaml").is_file():
            return c
    pytest.fail(
        "KubeRay CRD schemas not found: no ray.io_rayservices.yaml in any of "
        + ", ".join(str(c) for c in candidates)
        + f". The repository expects shared/schemas beside it (../shared/schemas) or ${SCHEMAS_ENV}."
        " This is a failure, never a skip: the RayService must be validated.",
        pytrace=False,
    )


# --------------------------------------------------------------------------------------------------
# Validators


def validate_core(doc: dict[str, Any]) -> None:
    """Strict kubernetes-validate; raises SchemaNotFoundError for a kind it does not know."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 (CRD) schema in which objects reject unknown fields, as
    `kubectl apply --validate=strict` does; open maps and preserve-unknown-fields stay open."""
    if not isinstance(schema, dict):
        return schema
    s = dict(schema)
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [_strict(x) for x in s[key]]
    if isinstance(s.get("not"), dict):
        s["not"] = _strict(s["not"])
    return s


class CRDValidators:
    """Strict JSON-Schema validators for every served version of every CRD in a directory."""

    def __init__(self, schemas_dir: Path) -> None:
        self.by_type: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        self.deprecated: set[tuple[str, str]] = set()
        for path in sorted(schemas_dir.glob("*.yaml")):
            for crd in _load_yaml_docs(path):
                if crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    if not v.get("served", False):
                        continue
                    key = (f"{group}/{v['name']}", kind)
                    schema = _strict(v["schema"]["openAPIV3Schema"])
                    # OpenAPI v3.0 schemas are a Draft 4 dialect (x-kubernetes-* and nullable ignored).
                    jsonschema.Draft4Validator.check_schema(schema)
                    self.by_type[key] = jsonschema.Draft4Validator(schema)
                    if v.get("deprecated"):
                        self.deprecated.add(key)

    def validate(self, doc: dict[str, Any]) -> None:
        key = (doc["apiVersion"], doc["kind"])
        if key not in self.by_type:
            raise LookupError(f"no CRD schema for {key}")
        if key in self.deprecated:
            raise ValueError(f"{key} is a deprecated version of the CRD; use the storage version")
        errors = sorted(self.by_type[key].iter_errors(doc), key=lambda e: list(e.absolute_path))
        if errors:
            raise jsonschema.ValidationError(
                "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:10])
            )


_SECRET_KEY_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key"],
    "properties": {"key": {"type": "string"}, "name": {"type": "string"}, "optional": {"type": "boolean"}},
}
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

# No package in a registry ships the prometheus-operator CRDs as a schema (see the module docstring),
# so this is a hand transcription of monitoring.coreos.com/v1 ServiceMonitor's openAPIV3Schema
# (prometheus-operator v0.84 CRD), limited to the fields mmrm uses and strict: a field outside this
# subset, a wrong type, a bad duration or scheme fails. Extend it when the manifest uses more.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},  # checked separately as core ObjectMeta
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["endpoints", "selector"],
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": _STRING_MAP,
                        "matchExpressions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["key", "operator"],
                                "properties": {
                                    "key": {"type": "string"},
                                    "operator": {"type": "string"},
                                    "values": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY_SELECTOR},
                            },
                            "bearerTokenSecret": _SECRET_KEY_SELECTOR,
                        },
                    },
                },
            },
        },
    },
}


def validate_service_monitor(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(doc)


def validate_manifest(doc: dict[str, Any], crds: CRDValidators) -> None:
    """Route a manifest to its schema. Anything not a known CRD or ServiceMonitor goes to
    kubernetes-validate, which raises for kinds it does not know: nothing passes unvalidated."""
    if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
        raise ValueError("a manifest needs a string apiVersion and kind")
    if "status" in doc:
        raise ValueError("a manifest must not carry status")
    key = (doc["apiVersion"], doc["kind"])
    if key in crds.by_type or doc["apiVersion"].split("/")[0] in {k[0].split("/")[0] for k in crds.by_type}:
        crds.validate(doc)
    elif key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
        validate_service_monitor(doc)
    else:
        validate_core(doc)
        return
    # Custom resources' metadata is only `type: object` in their schemas: check it as ObjectMeta.
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]})


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def schemas_dir() -> Path:
    return find_schemas_dir(schema_dir_candidates())


@pytest.fixture(scope="session")
def crds(schemas_dir: Path) -> CRDValidators:
    v = CRDValidators(schemas_dir)
    assert ("ray.io/v1", "RayService") in v.by_type, f"no served ray.io/v1 RayService in {schemas_dir}"
    return v


@pytest.fixture(scope="session")
def rayservice() -> dict[str, Any]:
    return one("RayService")


@pytest.fixture(scope="session")
def serve_config() -> dict[str, Any]:
    return yaml.load(SERVE_CONFIG.read_text(), Loader=_Loader)


def _pod_templates(rs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rs["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]
    for g in cluster.get("workerGroupSpecs", []):
        yield g["groupName"], g["template"]


def _containers(rs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for group, tpl in _pod_templates(rs):
        for c in tpl["spec"]["containers"]:
            yield group, c


# --------------------------------------------------------------------------------------------------
# 1. Schemas: every manifest, core kinds, CRDs, ServiceMonitor; and the negative cases.


def test_k8s_dir_has_the_expected_kinds() -> None:
    kinds = sorted(d.get("kind") for _, d in manifests())
    assert kinds == ["NetworkPolicy", "PersistentVolumeClaim", "RayService", "Secret", "Secret", "ServiceMonitor"]


@pytest.mark.parametrize("name_doc", manifests(), ids=lambda nd: nd[0])
def test_manifest_validates(name_doc: tuple[str, dict[str, Any]], crds: CRDValidators) -> None:
    _, doc = name_doc
    validate_manifest(doc, crds)


def test_rayservice_pod_templates_are_valid_core_pod_templates(rayservice: dict[str, Any]) -> None:
    # The CRD embeds PodTemplateSpec; validate it again with the core schema of every K8S_VERSION.
    for group, tpl in _pod_templates(rayservice):
        validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"mmrm-{group}"}, "template": tpl})


@pytest.mark.parametrize(
    "doc",
    [
        {"apiVersion": "v1", "kind": "Secrett", "metadata": {"name": "x"}},  # misspelled kind
        {"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "x"}},  # unknown kind
        {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}},  # unknown CRD
        {"apiVersion": "ray.io/v1", "kind": "RayJobb", "metadata": {"name": "x"}, "spec": {}},
    ],
    ids=["misspelled-core", "unknown-core", "unknown-group", "misspelled-ray"],
)
def test_unknown_kinds_fail(doc: dict[str, Any], crds: CRDValidators) -> None:
    with pytest.raises((kubernetes_validate.SchemaNotFoundError, LookupError)):
        validate_manifest(doc, crds)


def test_kind_without_apiversion_fails(crds: CRDValidators) -> None:
    with pytest.raises(ValueError):
        validate_manifest({"kind": "Secret", "metadata": {"name": "x"}}, crds)


def test_core_unknown_field_and_wrong_type_fail(crds: CRDValidators) -> None:
    secret = one("Secret", API_TOKEN_SECRET)
    bad = copy.deepcopy(secret)
    bad["stringDatta"] = bad.pop("stringData")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(bad, crds)
    pvc = copy.deepcopy(one("PersistentVolumeClaim"))
    pvc["spec"]["accessModes"] = "ReadWriteMany"  # must be a list
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(pvc, crds)


def _mutated(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


WORKER = ["spec", "rayClusterConfig", "workerGroupSpecs", 0]


@pytest.mark.parametrize(
    "path,value",
    [
        (WORKER + ["minReplicas"], "1"),  # int32 as a string
        (WORKER + ["maxReplicas"], 4.5),
        (["spec", "serveConfigV2"], {"applications": []}),  # must be a YAML *string*
        (["spec", "rayClusterConfig", "enableInTreeAutoscaling"], "yes"),
        (["spec", "rayClusterConfig", "headGroupSpec", "rayStartParams"], {"num-cpus": 0}),  # map of strings
        (WORKER + ["template", "spec", "containers", 0, "ports"], [{"containerPort": "8000"}]),
        (["spec", "rayClusterConfig", "workerGroupSpecs"], {"groupName": "gpu"}),  # must be a list
    ],
    ids=["minReplicas-str", "maxReplicas-float", "serveConfigV2-object", "autoscaling-str", "startparams-int",
         "port-str", "workers-object"],
)
def test_rayservice_wrong_types_fail(rayservice: dict[str, Any], crds: CRDValidators, path: list[Any], value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        crds.validate(_mutated(rayservice, path, value))


@pytest.mark.parametrize(
    "path",
    [["spec", "serveConfigV3"], ["spec", "rayClusterConfig", "headGroupSpec", "replicas"], WORKER + ["gpus"]],
    ids=["spec", "headGroupSpec", "workerGroup"],
)
def test_rayservice_unknown_fields_fail(rayservice: dict[str, Any], crds: CRDValidators, path: list[Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        crds.validate(_mutated(rayservice, path, 1))


def test_rayservice_missing_required_fails(rayservice: dict[str, Any], crds: CRDValidators) -> None:
    bad = copy.deepcopy(rayservice)
    del bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError):
        crds.validate(bad)


def test_rayservice_deprecated_apiversion_fails(rayservice: dict[str, Any], crds: CRDValidators) -> None:
    with pytest.raises((ValueError, LookupError)):
        validate_manifest({**rayservice, "apiVersion": "ray.io/v1alpha1"}, crds)


def test_service_monitor_negative_cases(crds: CRDValidators) -> None:
    sm = one("ServiceMonitor")
    ep = ["spec", "endpoints", 0]
    for path, value in [
        (ep + ["interval"], "15 seconds"),
        (ep + ["scheme"], "ftp"),
        (ep + ["prot"], "serve"),
        (ep + ["authorization", "credentials"], {"name": "mmrm-api-token"}),  # key is required
        (["spec", "selector", "matchLabels"], {"ray.io/serve": 1}),
    ]:
        with pytest.raises(jsonschema.ValidationError):
            validate_manifest(_mutated(sm, path, value), crds)
    no_selector = copy.deepcopy(sm)
    del no_selector["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(no_selector, crds)


def test_missing_schemas_dir_fails_not_skips(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="KubeRay CRD schemas not found"):
        find_schemas_dir([tmp_path / "nowhere"])


# --------------------------------------------------------------------------------------------------
# 2. The serve config: one content, valid for Ray, and wired to the manifests.


def test_serve_config_v2_equals_serve_config_file(rayservice: dict[str, Any], serve_config: dict[str, Any]) -> None:
    embedded = rayservice["spec"]["serveConfigV2"]
    assert isinstance(embedded, str)
    assert yaml.load(embedded, Loader=_Loader) == serve_config, "k8s/rayservice.yaml serveConfigV2 != k8s/serve-config.yaml"


def test_serve_config_is_a_valid_ray_serve_config(serve_config: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)
    with pytest.raises(Exception):
        ServeDeploySchema.model_validate({**serve_config, "http_options": {"host": "0.0.0.0", "port": "http"}})


def test_serve_config_is_a_valid_mmrm_config() -> None:
    from mmrm.serve.config import load_serve_file

    (_, service), = load_serve_file(SERVE_CONFIG).mmrm_apps()
    assert service.auth.token_env and service.auth.protect_metrics


def test_serve_config_binds_all_interfaces_explicitly(serve_config: dict[str, Any], rayservice: dict[str, Any]) -> None:
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    assert serve_config["proxy_location"] == "EveryNode"
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    ports = {p.get("name"): p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    # KubeRay builds the serve Service from the head container port named "serve".
    assert ports["serve"] == serve_config["http_options"]["port"]
    assert {6379, 8265, 8000} <= set(ports.values())
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def test_token_comes_from_a_secret_never_from_the_files(serve_config: dict[str, Any], rayservice: dict[str, Any]) -> None:
    auth = serve_config["applications"][0]["args"]["auth"]
    assert set(auth) <= {"token_env", "protect_metrics"}, "the config names the variable; it never holds a token"
    secret = one("Secret", API_TOKEN_SECRET)
    assert "REPLACE" in json.dumps(secret.get("stringData", {})), "secret.example.yaml must hold a placeholder only"
    (key,) = secret["stringData"]
    for group, c in _containers(rayservice):
        env = {e["name"]: e for e in c.get("env", [])}
        assert auth["token_env"] in env, f"{group}: {auth['token_env']} is not set"
        ref = env[auth["token_env"]]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], key), group
        assert "value" not in env[auth["token_env"]]
    if auth.get("protect_metrics"):
        endpoint = one("ServiceMonitor")["spec"]["endpoints"][0]
        cred = endpoint["authorization"]["credentials"]
        assert endpoint["authorization"]["type"] == "Bearer"
        assert (cred["name"], cred["key"]) == (secret["metadata"]["name"], key)


def test_service_monitor_targets_the_kuberay_serve_service(rayservice: dict[str, Any]) -> None:
    spec = one("ServiceMonitor")["spec"]
    # KubeRay labels the Service it creates for a RayService NAME with ray.io/serve: NAME-serve and
    # names its port "serve" after the head container port (ray-operator common/service.go).
    assert spec["selector"]["matchLabels"] == {"ray.io/serve": f"{rayservice['metadata']['name']}-serve"}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "serve" and endpoint["path"] == "/metrics"


def test_gpu_worker_group_fits_the_models(serve_config: dict[str, Any], rayservice: dict[str, Any]) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    head_res = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_res.get("limits", {}) and {"cpu", "memory"} <= set(head_res["requests"])
    assert {"cpu", "memory"} <= set(head_res["limits"])
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})]
    assert gpu_groups, "no worker group with an nvidia.com/gpu limit"
    gpus_per_pod = int(gpu_groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    cpus_per_pod = float(gpu_groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    max_gpus = sum(int(g["maxReplicas"]) for g in gpu_groups) * gpus_per_pod
    models = serve_config["applications"][0]["args"]["models"]
    need = 0
    for m in models:
        replicas = m.get("autoscaling", {}).get("max_replicas", m.get("num_replicas", 1))
        need += replicas * m.get("num_gpus", 0)
        assert m.get("num_gpus", 0) <= gpus_per_pod and m.get("num_cpus", 1) < cpus_per_pod, m["name"]
    assert need <= max_gpus, f"models need up to {need} GPUs, the worker groups offer {max_gpus}"
    for g in gpu_groups:
        assert 0 < g["minReplicas"] <= g["maxReplicas"]


def test_models_and_image_wiring(serve_config: dict[str, Any], rayservice: dict[str, Any]) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    version = cluster["rayVersion"]
    pvc = one("PersistentVolumeClaim")["metadata"]["name"]
    for group, tpl in _pod_templates(rayservice):
        volumes = {v["name"]: v for v in tpl["spec"].get("volumes", [])}
        for c in tpl["spec"]["containers"]:
            assert re.fullmatch(rf"[\w./-]+:{re.escape(version)}(-[\w.-]+)?", c["image"]), (group, c["image"])
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            assert "/models" in mounts, f"{group}: /models not mounted"
            assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == pvc
    for m in serve_config["applications"][0]["args"]["models"]:
        assert m["checkpoint"].startswith("/models/"), m


# --------------------------------------------------------------------------------------------------
# 2b. Ray's own endpoints: token authentication and the NetworkPolicy in front of the Ray pods.

# The Secret key KubeRay reads the token from (ray-operator utils/constant.go RAY_AUTH_TOKEN_SECRET_KEY).
KUBERAY_TOKEN_KEY = "auth_token"
# KubeRay injects these into every Ray container only where the container does not set them itself
# (ray-operator common/pod.go SetContainerTokenAuthEnvVars), so a manifest that sets one wins.
RAY_AUTH_ENV = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_K8S_TOKEN_AUTH"}


def test_rayservice_turns_on_ray_token_auth_from_our_secret(rayservice: dict[str, Any]) -> None:
    auth = rayservice["spec"]["rayClusterConfig"]["authOptions"]
    assert auth["mode"] == "token"
    # With secretName KubeRay generates no Secret of its own, and reads ours (key auth_token).
    assert auth["secretName"] == RAY_TOKEN_SECRET
    secret = one("Secret", RAY_TOKEN_SECRET)
    assert set(secret["stringData"]) == {KUBERAY_TOKEN_KEY}
    assert "REPLACE" in secret["stringData"][KUBERAY_TOKEN_KEY], "secret.example.yaml must hold a placeholder only"
    # Ray's cluster token and the scoring API's token are different secrets for different audiences.
    assert RAY_TOKEN_SECRET != API_TOKEN_SECRET
    assert not auth.get("enableK8sTokenAuth"), "K8s-delegated auth is unsupported for RayService"
    for group, c in _containers(rayservice):
        overridden = RAY_AUTH_ENV & {e["name"] for e in c.get("env", [])}
        assert not overridden, f"{group}: {sorted(overridden)} set by hand would override authOptions"


@pytest.mark.parametrize("path,value", [(["mode"], "tokens"), (["secretName"], 7), (["secretname"], "x")],
                         ids=["mode-enum", "secretName-type", "unknown-field"])
def test_rayservice_bad_auth_options_fail(rayservice: dict[str, Any], crds: CRDValidators, path: list[str],
                                          value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        crds.validate(_mutated(rayservice, ["spec", "rayClusterConfig", "authOptions", *path], value))


def test_network_policy_is_valid_and_bad_ones_fail() -> None:
    policy = one("NetworkPolicy")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    validate_core(policy)
    for path, value in [(["spec", "policyTypes"], "Ingress"),  # must be a list
                        (["spec", "ingres"], []),  # unknown field
                        (["spec", "ingress", 0, "ports", 0, "port"], [8000])]:
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_core(_mutated(policy, path, value))


def _selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector: every matchLabels pair AND every matchExpression; {} matches all."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, values = e["key"] in labels, e.get("values", [])
        ok = {"In": has and labels.get(e["key"]) in values, "NotIn": not has or labels[e["key"]] not in values,
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


class Pod:
    def __init__(self, namespace: str, labels: dict[str, str]) -> None:
        self.namespace, self.labels = namespace, labels
        # Every namespace carries this label (Kubernetes >= 1.21), which namespaceSelectors match.
        self.namespace_labels = {"kubernetes.io/metadata.name": namespace}


def ingress_allowed(policy: dict[str, Any], policy_ns: str, dst: Pod, src: Pod, port: int) -> bool:
    """Whether NetworkPolicy `policy` (the only one, applied in `policy_ns`) lets `src` open TCP `port`
    on `dst`, per networking.k8s.io/v1: a selected pod is isolated for ingress and admits only what a
    rule allows; a rule with no `ports` covers every port and one with no `from` every source; a peer
    with both selectors needs both, one with only a podSelector means this namespace."""
    spec = policy["spec"]
    if dst.namespace != policy_ns or not _selector_matches(spec["podSelector"], dst.labels):
        return True  # not isolated by this policy
    if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        return True
    for rule in spec.get("ingress", []):
        ports = rule.get("ports") or [{}]
        for p in ports:
            assert isinstance(p.get("port", 0), int), "named ports: extend this evaluator"
        if not any(p.get("protocol", "TCP") == "TCP" and ("port" not in p or p["port"] <= port <= p.get("endPort", p["port"]))
                   for p in ports):
            continue
        peers = rule.get("from") or []
        if not peers:
            return True
        for peer in peers:
            assert "ipBlock" not in peer, "ipBlock admits by address, not by pod: extend this evaluator"
            ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
            ns_ok = src.namespace == policy_ns if ns_sel is None else _selector_matches(ns_sel, src.namespace_labels)
            if ns_ok and (pod_sel is None or _selector_matches(pod_sel, src.labels)):
                return True
    return False


def test_policy_evaluator_semantics() -> None:
    """The evaluator itself, on small policies whose answers the NetworkPolicy docs give."""
    a, b = Pod("ns", {"app": "a"}), Pod("other", {"app": "a"})
    pol = {"spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"], "ingress": [
        {"ports": [{"port": 80}]},
        {"from": [{"podSelector": {"matchLabels": {"role": "x"}}}], "ports": [{"port": 9000, "endPort": 9010}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}]},
    ]}}
    x_here, x_there = Pod("ns", {"role": "x"}), Pod("far", {"role": "x"})
    assert ingress_allowed(pol, "ns", a, x_there, 80) and not ingress_allowed(pol, "ns", a, x_there, 81)
    assert ingress_allowed(pol, "ns", a, x_here, 9005) and not ingress_allowed(pol, "ns", a, x_there, 9005)
    assert not ingress_allowed(pol, "ns", a, x_here, 9011)
    assert ingress_allowed(pol, "ns", a, b, 12345)  # any pod of namespace "other", any port
    assert ingress_allowed(pol, "ns", b, x_there, 22)  # b is in another namespace: not selected
    assert not ingress_allowed({"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}, "ns", a, x_here, 80)
    expr = {"matchExpressions": [{"key": "k", "operator": "In", "values": ["1"]}, {"key": "j", "operator": "DoesNotExist"}]}
    assert _selector_matches(expr, {"k": "1"}) and not _selector_matches(expr, {"k": "1", "j": ""})


def kuberay_pod_labels(rs: dict[str, Any], group: str, cluster_suffix: str) -> dict[str, str]:
    """The labels KubeRay puts on a Ray pod of RayService `rs`, built the way ray-operator
    common/pod.go labelPod does: its own labels, then the pod template's on top, except
    ray.io/node-type, ray.io/group and ray.io/cluster, which the template cannot override. A
    RayService's RayCluster is named `<name>-<5 random chars>` (utils.GenerateRayClusterName)."""
    cluster = f"{rs['metadata']['name']}-{cluster_suffix}"
    node_type = "head" if group == "head" else "worker"
    fixed = {"ray.io/cluster": cluster, "ray.io/node-type": node_type,
             "ray.io/group": "headgroup" if group == "head" else group}
    labels = {"ray.io/is-ray-node": "yes", "ray.io/identifier": f"{cluster}-{node_type}",
              "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator", **fixed}
    template = dict(_pod_templates(rs))[group]
    labels.update({k: v for k, v in template["metadata"].get("labels", {}).items() if k not in fixed})
    return labels


APP_NS = "scoring"  # wherever the RayService is applied
OPERATOR_NS = "default"  # KubeRay's Helm chart and kustomize default; networkpolicy.yaml says to edit it
SERVE_PORT = 8000
# Ray's ports that must not be open to the cluster: dashboard (job submission), dashboard agent
# (KubeRay's default listen port), GCS, Ray client, Ray's metrics, and one in the workers' range.
RAY_INTERNAL_PORTS = {"dashboard": 8265, "agent": 52365, "gcs": 6379, "client": 10001, "ray-metrics": 8080,
                      "worker": 10123}


def test_network_policy_admits_only_the_operator_and_the_clusters_own_pods(rayservice: dict[str, Any]) -> None:
    policy = one("NetworkPolicy")
    groups = [g for g, _ in _pod_templates(rayservice)]
    ours = {g: Pod(APP_NS, kuberay_pod_labels(rayservice, g, "k8x2q")) for g in groups}
    # After an upgrade the RayService's new RayCluster has another suffix; its pods are still ours.
    ours_next = {g: Pod(APP_NS, kuberay_pod_labels(rayservice, g, "p4m9z")) for g in groups}
    head = ours["head"]
    assert head.labels["ray.io/node-type"] == "head" and head.labels["ray.io/cluster"].startswith("mmrm-")
    operators = {  # the operator pod's labels in its Helm chart and in its kustomize manifests
        "helm": Pod(OPERATOR_NS, {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/instance": "kuberay-operator",
                                  "app.kubernetes.io/component": "kuberay-operator"}),
        "kustomize": Pod(OPERATOR_NS, {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/component": "kuberay-operator"}),
    }
    strangers = {
        "client pod, same namespace": Pod(APP_NS, {"app": "client"}),
        "pod in another namespace": Pod("tenant-b", {"app": "client"}),
        "operator-labelled pod outside the operator's namespace": Pod("tenant-b", {"app.kubernetes.io/component": "kuberay-operator"}),
        "non-operator pod in the operator's namespace": Pod(OPERATOR_NS, {"app": "web"}),
        "another RayCluster's pod, same namespace": Pod(APP_NS, {"ray.io/is-ray-node": "yes", "ray.io/cluster": "other-x1y2z",
                                                                 "ray.io/node-type": "head", "app.kubernetes.io/name": "kuberay"}),
    }
    # The policy isolates exactly our Ray pods: not the clients, not another RayCluster's pods.
    for who, pod in {**ours, **ours_next}.items():
        assert _selector_matches(policy["spec"]["podSelector"], pod.labels), f"{who} pod not selected"
    for who in ("client pod, same namespace", "another RayCluster's pod, same namespace"):
        assert not _selector_matches(policy["spec"]["podSelector"], strangers[who].labels), who

    for dst_group, dst in ours.items():
        for src in [*operators.values(), *strangers.values(), *ours.values()]:
            assert ingress_allowed(policy, APP_NS, dst, src, SERVE_PORT), (dst_group, src.labels)
        for name, port in RAY_INTERNAL_PORTS.items():
            for who, src in strangers.items():
                assert not ingress_allowed(policy, APP_NS, dst, src, port), f"{who} reaches {dst_group}:{port} ({name})"
            for src in [*ours.values(), *ours_next.values()]:
                assert ingress_allowed(policy, APP_NS, dst, src, port), f"own pod refused on {dst_group}:{port} ({name})"
            for flavour, op in operators.items():
                # The operator needs the dashboard (serve deploy and status) and nothing else of Ray's.
                assert ingress_allowed(policy, APP_NS, dst, op, port) == (name == "dashboard"), (flavour, dst_group, name)


def test_network_policy_keeps_the_ports_the_rayservice_declares(rayservice: dict[str, Any], serve_config: dict[str, Any]) -> None:
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == SERVE_PORT == serve_config["http_options"]["port"]
    assert ports["dashboard"] == RAY_INTERNAL_PORTS["dashboard"] and ports["gcs-server"] == RAY_INTERNAL_PORTS["gcs"]
    # The ServiceMonitor scrapes mmrm's /metrics on the serve port, which the policy leaves open.
    assert one("ServiceMonitor")["spec"]["endpoints"][0]["port"] == "serve"


# --------------------------------------------------------------------------------------------------
# 3. The Grafana dashboard and the metric names it queries.

# The service's documented metrics: name as exposed (counters with _total) -> (type, labels).
DOCUMENTED_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "mmrm_requests_total": ("counter", frozenset({"route", "model", "code"})),
    "mmrm_request_duration_seconds": ("histogram", frozenset({"route", "model"})),
    "mmrm_errors_total": ("counter", frozenset({"route", "kind"})),
    "mmrm_score": ("histogram", frozenset({"route", "model"})),
    "mmrm_batch_size": ("histogram", frozenset({"model"})),
    "mmrm_queue_depth": ("gauge", frozenset({"model"})),
    "mmrm_inflight_requests": ("gauge", frozenset()),
    "mmrm_rejected_total": ("counter", frozenset({"reason"})),
    "mmrm_items_total": ("counter", frozenset({"route", "model", "outcome"})),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                    "offset", "inf", "nan", "atan2"}


def _strip_promql(expr: str) -> str:
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables ($model, $__rate_interval, ${x})
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery windows
    return s


def promql_metric_names(expr: str) -> set[str]:
    """Every metric name in a PromQL expression: identifiers that are not functions, keywords,
    label names in {...} matchers, or label lists of by/without/on/ignoring/group_*."""
    s = _strip_promql(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?", s):
        if m.group(2) or m.group(1).lower() in _PROMQL_KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def promql_label_names(expr: str) -> set[str]:
    s = _strip_promql(expr)
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", s):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        labels |= {x.strip() for x in body.split(",") if x.strip()}
    return labels


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows' nested panels too) and template variable."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                assert t.get("expr"), f"panel {p.get('title')!r} target {t.get('refId')} has no expr"
                out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q)
        if m:
            q = f"count by ({m.group(2)}) ({m.group(1)})"
        else:
            m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q)
            assert m, f"variable {v['name']}: unsupported query {q!r}"
            q = m.group(1)
        out.append((f"variable {v['name']}", q))
    return out


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    return set().union(*(promql_metric_names(q) for _, q in dashboard_queries(dashboard)))


def documented_series() -> dict[str, str]:
    """Series name -> documented base metric (histograms expose _bucket/_sum/_count)."""
    out = {}
    for name, (kind, _) in DOCUMENTED_METRICS.items():
        for suffix in HISTOGRAM_SUFFIXES if kind == "histogram" else ("",):
            out[name + suffix] = name
    return out


def exposed_series_names(exposition: str) -> set[str]:
    """Series names a Prometheus scrape of this text can produce, from the families' TYPE lines
    (a labelled metric with no samples yet still declares itself) and from the samples."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(exposition):
        names |= {s.name for s in fam.samples}
        if fam.type == "counter":
            names.add(fam.name + "_total")  # the parser drops _total from a counter family's name
        elif fam.type == "histogram":
            names |= {fam.name + s for s in HISTOGRAM_SUFFIXES}
        elif fam.type == "summary":
            names |= {fam.name, fam.name + "_sum", fam.name + "_count"}
        else:
            names.add(fam.name)
    return names


def missing_from_exposition(dashboard: dict[str, Any], exposition: str) -> set[str]:
    return dashboard_metric_names(dashboard) - exposed_series_names(exposition)


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    ds_vars = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert [v["query"] for v in ds_vars] == ["prometheus"]
    for p in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]


def test_promql_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(mmrm_x_bucket{model=~"$model", code!~"5.."}'
            '[$__rate_interval]))) / on (route) group_left sum without (kind) (mmrm_y_total offset 5m) > bool 0'
            ' or vector(0) and mmrm_z')
    assert promql_metric_names(expr) == {"mmrm_x_bucket", "mmrm_y_total", "mmrm_z"}
    assert promql_label_names(expr) == {"model", "code", "le", "route", "kind"}
    assert promql_metric_names('{__name__="x"}') == set()


def test_dashboard_queries_only_documented_metrics(dashboard: dict[str, Any]) -> None:
    series = documented_series()
    names = dashboard_metric_names(dashboard)
    assert names, "the dashboard queries no metric"
    assert names <= set(series), f"not documented: {sorted(names - set(series))}"
    # Every documented metric has a panel.
    assert {series[n] for n in names} == set(DOCUMENTED_METRICS)


def test_dashboard_labels_exist_on_the_metrics_queried(dashboard: dict[str, Any]) -> None:
    series = documented_series()
    for where, q in dashboard_queries(dashboard):
        bases = {series[n] for n in promql_metric_names(q)}
        allowed = set().union(*(DOCUMENTED_METRICS[b][1] for b in bases))
        if any(n.endswith("_bucket") for n in promql_metric_names(q)):
            allowed.add("le")
        assert promql_label_names(q) <= allowed, f"{where}: labels {sorted(promql_label_names(q) - allowed)} in {q}"


def _documented_registry(skip: str | None = None, score_as_gauge: bool = False) -> str:
    """Exposition text of a prometheus-client registry holding the documented metrics, unobserved."""
    reg = CollectorRegistry()
    for name, (kind, labels) in DOCUMENTED_METRICS.items():
        if name == skip:
            continue
        if kind == "counter":
            Counter(name.removesuffix("_total"), name, sorted(labels), registry=reg)
        elif kind == "gauge" or (score_as_gauge and name == "mmrm_score"):
            Gauge(name, name, sorted(labels), registry=reg)
        else:
            Histogram(name, name, sorted(labels), registry=reg)
    return generate_latest(reg).decode()


def test_metric_check_against_a_prometheus_client_exposition(dashboard: dict[str, Any]) -> None:
    # The same check the live test runs, on text produced by prometheus-client itself.
    assert missing_from_exposition(dashboard, _documented_registry()) == set()
    assert missing_from_exposition(dashboard, _documented_registry(skip="mmrm_score")) == {
        "mmrm_score_bucket", "mmrm_score_sum", "mmrm_score_count"}
    assert "mmrm_score_bucket" in missing_from_exposition(dashboard, _documented_registry(score_as_gauge=True))


def test_dashboard_metrics_exist_in_live_metrics(dashboard: dict[str, Any], live_metrics_text: str) -> None:
    """Every metric the dashboard queries is exposed by the running service's /metrics."""
    missing = missing_from_exposition(dashboard, live_metrics_text)
    assert not missing, f"the dashboard queries metrics the live /metrics lacks: {sorted(missing)}"


def test_documented_metrics_exist_in_live_metrics(live_metrics_text: str) -> None:
    missing = set(documented_series()) - exposed_series_names(live_metrics_text)
    assert not missing, f"documented metrics missing from the live /metrics: {sorted(missing)}"


def test_vendored_crd_matches_the_shared_copy() -> None:
    """k8s/schemas/ is a copy of the project's shared KubeRay schemas; it must not drift from them."""
    shared = [d for d in shared_schema_dirs() if (d / "ray.io_rayservices.yaml").is_file()]
    if not shared:
        pytest.skip("no shared schemas beside this checkout to compare the vendored copy with")
    assert (VENDORED_SCHEMAS / "ray.io_rayservices.yaml").read_bytes() == (shared[0] / "ray.io_rayservices.yaml").read_bytes()


# --------------------------------------------------------------------------------------------------
# k8s/vllm/: vLLM servers beside the Serve app (the `vllm` reward engine and an `openai` judge).

VLLM_DIR = K8S / "vllm"
VLLM_SERVE_CONFIG = VLLM_DIR / "serve-config.yaml"


def vllm_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}#{i}", d) for p in sorted(VLLM_DIR.glob("*.y*ml")) if p != VLLM_SERVE_CONFIG
            for i, d in enumerate(_load_yaml_docs(p))]


def _vllm_deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in vllm_manifests() if d["kind"] == "Deployment"}


def _args(container: dict[str, Any]) -> dict[str, str]:
    out = {}
    for a in container.get("args", []):
        k, _, v = a.partition("=")
        out[k] = v
    return out


def test_vllm_dir_has_the_expected_kinds() -> None:
    kinds = sorted(d["kind"] for _, d in vllm_manifests())
    assert kinds == ["Deployment", "Deployment", "NetworkPolicy", "Service", "Service"]


@pytest.mark.parametrize("name_doc", vllm_manifests(), ids=lambda nd: nd[0])
def test_vllm_manifest_validates(name_doc: tuple[str, dict[str, Any]], crds: CRDValidators) -> None:
    validate_manifest(name_doc[1], crds)


def test_vllm_manifest_bad_fields_fail(crds: CRDValidators) -> None:
    dep = _vllm_deployments()["mmrm-vllm-rm"]
    for path, value in ((["spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet", "port"], [8000]),
                        (["spec", "template", "spec", "containers", 0, "resourcez"], {}),
                        (["spec", "replicas"], "one")):
        with pytest.raises(Exception):
            validate_manifest(_mutated(dep, path, value), crds)


def test_vllm_servers_have_their_own_image_resources_and_health_probes(rayservice: dict[str, Any]) -> None:
    ray_images = {c["image"] for _, c in _containers(rayservice)}
    deps = _vllm_deployments()
    assert set(deps) == {"mmrm-vllm-rm", "mmrm-vllm-judge"}
    for name, dep in deps.items():
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert c["image"].startswith("vllm/vllm-openai:") and c["image"] not in ray_images, name
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], name
        port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
        assert _args(c)["--port"] == str(port) and _args(c)["--host"] == "0.0.0.0", name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, (name, probe)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"] == labels, name
    rm = _args(deps["mmrm-vllm-rm"]["spec"]["template"]["spec"]["containers"][0])
    from mmrm.rm.engines.vllm import POOLER_CONFIG

    assert rm["--runner"] == "pooling" and rm["--convert"] == "embed"
    assert json.loads(rm["--pooler-config"]) == json.loads(POOLER_CONFIG)
    judge = _args(deps["mmrm-vllm-judge"]["spec"]["template"]["spec"]["containers"][0])
    assert int(judge["--max-logprobs"]) >= 20  # the judge backend reads 20 top logprobs


def test_vllm_serve_config_points_at_the_vllm_services() -> None:
    from ray.serve.schema import ServeDeploySchema

    from mmrm.serve.config import load_serve_file

    raw = yaml.load(VLLM_SERVE_CONFIG.read_text(), Loader=_Loader)
    ServeDeploySchema.model_validate(raw)
    (_, service), = load_serve_file(VLLM_SERVE_CONFIG).mmrm_apps()
    services = {d["metadata"]["name"]: d for _, d in vllm_manifests() if d["kind"] == "Service"}
    deps = _vllm_deployments()

    def target(url: str) -> tuple[str, dict[str, Any]]:
        m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)/v1", url)
        assert m, url
        svc = services[m.group(1)]
        assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"]}, url
        [dep] = [d for d in deps.values() if _selector_matches({"matchLabels": svc["spec"]["selector"]},
                                                                 d["spec"]["template"]["metadata"]["labels"])]
        return m.group(1), _args(dep["spec"]["template"]["spec"]["containers"][0])

    [model] = [m for m in service.models if m.engine == "vllm"]
    name, args = target(model.vllm.base_url)
    assert name == "mmrm-vllm-rm" and args["--served-model-name"] == model.vllm.served_model
    assert model.num_gpus == 0  # the vLLM pod holds the GPU; the replica encodes and runs the head
    [judge] = service.judges
    name, args = target(judge.backend.base_url)
    assert name == "mmrm-vllm-judge" and args["--served-model-name"] == judge.backend.model
    assert service.auth.token_env and service.auth.protect_metrics


def test_vllm_network_policy_admits_only_mmrm_ray_pods_and_allows_no_egress(rayservice: dict[str, Any]) -> None:
    [policy] = [d for _, d in vllm_manifests() if d["kind"] == "NetworkPolicy"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and policy["spec"]["egress"] == []
    for dep in _vllm_deployments().values():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert _selector_matches(policy["spec"]["podSelector"], labels)
        server = Pod("default", labels)
        ray_pod = Pod("default", kuberay_pod_labels(rayservice, "gpu", "abcde"))
        stranger = Pod("default", {"app": "something-else"})
        assert ingress_allowed(policy, "default", server, ray_pod, 8000)
        assert not ingress_allowed(policy, "default", server, stranger, 8000)
        assert not ingress_allowed(policy, "default", server, ray_pod, 9000)
