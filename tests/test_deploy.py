"""deploy/ and charts/ as an operator runs them.

Every manifest is rendered the way `kubectl apply -k` and `helm install` would
(kustomize from the kubectl wheel; the chart through Helm's own Go code, from
helm-python-sdk), validated against the Kubernetes schemas of the oldest
version the chart supports and the newest one kubernetes-validate ships, and
checked for what an operator relies on. Docker cannot run here: the compose
file goes through a strict Compose-spec parser, the Dockerfile through
hadolint, and its build steps are run as the image runs them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import compose_spec
import helm_python
import httpx
import kubernetes_validate
import pytest
import yaml

from conftest import free_port

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent  # kubectl and hadolint come with the dev extras
CHART = ROOT / "charts/model-router"
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
SPEC_HELM = (
    "helm install model-router ./charts/model-router"
    " --set image.tag=latest --set redis.enabled=true --set ingress.enabled=true"
)
SPEC_PROBES = {
    "livenessProbe": {"path": "/health", "initialDelaySeconds": 30, "periodSeconds": 10},
    "readinessProbe": {"path": "/health/ready", "initialDelaySeconds": 5, "periodSeconds": 5},
}
SPEC_RESOURCES = {
    "requests": {"memory": "512Mi", "cpu": "250m"},
    "limits": {"memory": "1Gi", "cpu": "500m"},
}
DRAIN_SECONDS = 30  # at least this long for the router's drain, after the preStop sleep
PROVIDER_KEYS_DIR = "/var/run/secrets/model-router/providers"


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} missing: `make build` installs it (pyproject's dev extras)"
    return str(path)


# --- the Dockerfile, read as docker reads its last stage ----------------------


def final_stage() -> list[tuple[str, str]]:
    text = (ROOT / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln for ln in map(str.strip, text.splitlines()) if ln and not ln.startswith("#")]
    instructions = [tuple(ln.split(None, 1)) for ln in lines]
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def image_instruction(op: str) -> str:
    (arg,) = [arg for o, arg in final_stage() if o == op]
    return arg


def image_env() -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in shlex.split(image_instruction("ENV")))


# --- rendering -----------------------------------------------------------------


def load_all(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize(directory: Path = ROOT / "deploy/k8s") -> list[dict]:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return load_all(out.stdout)


def helm_template(release: str, sets: list[str]) -> list[dict]:
    values = helm_python.parse_set_string(",".join(sets)) if sets else None
    report = helm_python.lint(CHART, values, strict=True)
    assert not [m for m in report["messages"] if m["severity"] >= 2], report
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=release, namespace="model-router", is_install=True)
    return [
        doc for path, text in rendered.items() if path.endswith(".yaml") for doc in load_all(text)
    ]


def helm_command(command: str) -> list[dict]:
    """What `helm install RELEASE CHART --set ...` would apply."""
    argv = shlex.split(command)
    assert argv[:2] == ["helm", "install"], command
    release, chart = argv[2], argv[3]
    assert (ROOT / chart).resolve() == CHART.resolve(), f"{chart} is not the chart"
    assert all(a == "--set" for a in argv[4::2]), command
    return helm_template(release, argv[5::2])


def validate(docs: list[dict]) -> None:
    for doc in docs:
        # kubernetes-validate has no schema for the Prometheus Operator's CRDs:
        # the chart test with every option checks the ServiceMonitor's fields.
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


# --- what matters in a rendered set ----------------------------------------------


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered, expected one"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    return pod_spec(workload)["containers"][0]


def env_of(docs: list[dict], c: dict) -> dict[str, str | None]:
    """The container's environment as the kubelet builds it (None: from a Secret)."""
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        value = var.get("value")
        for ref in re.findall(r"\$\((\w+)\)", value or ""):
            assert ref in env, f"{var['name']} uses $({ref}) before it is defined"
        env[var["name"]] = value
    return env


def secret_refs(workload: dict) -> list[tuple[str, str | None, bool]]:
    """(Secret, key or None for all keys, optional) for every Secret the pod reads."""
    refs = []
    for c in pod_spec(workload)["containers"]:
        for var in c.get("env", []):
            if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                refs.append((ref["name"], ref["key"], ref.get("optional", False)))
        for source in c.get("envFrom", []):
            if ref := source.get("secretRef"):
                refs.append((ref["name"], None, ref.get("optional", False)))
    for vol in pod_spec(workload).get("volumes", []):
        if ref := vol.get("secret"):
            refs.append((ref["secretName"], None, ref.get("optional", False)))
    return refs


def check_secrets(docs: list[dict], existing: set[str] = frozenset()) -> None:
    """Every Secret a pod needs is rendered (with the key) or named by the operator:
    nothing has to be made by hand for the pods to start."""
    for workload in find(docs, "Deployment") + find(docs, "StatefulSet"):
        for name, key, optional in secret_refs(workload):
            if optional or name in existing:
                continue
            secret = one(docs, "Secret", name)
            assert key is None or key in secret["data"], f"Secret {name} has no {key}"


def check_router(docs: list[dict]) -> dict:
    deployment = one(docs, "Deployment")
    spec, c = pod_spec(deployment), container(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    for probe, want in SPEC_PROBES.items():
        got = c[probe]
        assert got["httpGet"]["path"] == want["path"] and got["httpGet"]["port"] == "http"
        assert {k: got[k] for k in ("initialDelaySeconds", "periodSeconds")} == {
            k: want[k] for k in ("initialDelaySeconds", "periodSeconds")
        }
    assert c["resources"] == SPEC_RESOURCES
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(image_instruction("USER").split(":")[0])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # A read-only root: the data dir and /tmp are volumes.
    env = env_of(docs, c)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert "emptyDir" in mounts[env["MODEL_ROUTER_DATA_DIR"]] and "emptyDir" in mounts["/tmp"]
    assert env["MODEL_ROUTER_DATA_DIR"] == image_env()["MODEL_ROUTER_DATA_DIR"]
    # Drain: the preStop sleep, then SIGTERM with DRAIN_SECONDS left.
    sleep_cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_cmd[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(sleep_cmd[1]) + DRAIN_SECONDS
    # Several replicas share one store, so REDIS_URL is always set.
    assert "REDIS_URL" in env
    service = one(docs, "Service", deployment["metadata"]["name"])
    assert selects(service["spec"]["selector"], labels)
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    # The spec's 3 replicas; under an autoscaler, its floor (and the Deployment
    # leaves the count to it, so a re-apply does not reset it).
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 3 and "replicas" not in deployment["spec"]
    if not find(docs, "HorizontalPodAutoscaler"):
        assert deployment["spec"]["replicas"] >= 3
    # Behind an ingress every request comes from its address: the per-address
    # limits (on by default) need the header it appends (ingress-nginx and the
    # usual controllers append the peer to X-Forwarded-For).
    behind_ingress = bool(find(docs, "Ingress"))
    assert (env.get("MODEL_ROUTER_CLIENT_ADDRESS_HEADER") == "X-Forwarded-For") == behind_ingress
    for ingress in find(docs, "Ingress"):
        (rule,) = ingress["spec"]["rules"]
        assert [rule["host"]] == ingress["spec"]["tls"][0]["hosts"]
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    return deployment


def check_bundled_redis(docs: list[dict], router: dict) -> None:
    """The bundled Redis keeps its data: AOF on a PersistentVolumeClaim."""
    redis = one(docs, "StatefulSet")
    labels = redis["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", redis["metadata"]["name"])
    assert selects(service["spec"]["selector"], labels)
    for router_side in find(docs, "Service", router["metadata"]["name"]):
        assert not selects(router_side["spec"]["selector"], labels)
    redis_url = env_of(docs, container(router))["REDIS_URL"]
    host = service["metadata"]["name"]
    assert re.fullmatch(rf"redis://(:\$\(REDIS_PASSWORD\)@)?{host}:6379/0", redis_url), redis_url
    c = container(redis)
    args = " ".join(c["args"])
    env = env_of(docs, c)
    for ref in re.findall(r"\$\((\w+)\)", args):
        assert ref in env, f"Redis' args use $({ref}), not in its env"
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(redis)["securityContext"]["runAsNonRoot"] is True


def check_provider_keys(deployment: dict, secret: str) -> None:
    c = container(deployment)
    assert secret in [s["secretRef"]["name"] for s in c["envFrom"] if "secretRef" in s]
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": PROVIDER_KEYS_DIR, "readOnly": True}


# --- the tests ------------------------------------------------------------------


def test_kustomize_base_validates_and_runs_with_nothing_made_by_hand():
    docs = kustomize()
    validate(docs)
    router = check_router(docs)
    check_bundled_redis(docs, router)
    check_secrets(docs)
    check_provider_keys(router, "model-router-providers")
    assert (
        one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
        == (one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"])
    )


def test_docs_overlay_for_an_external_redis_renders(tmp_path):
    docs_md = (ROOT / "docs/deployment.md").read_text()
    overlay = re.search(r"```yaml\n(resources: .*?)```", docs_md, re.S).group(1)
    # Laid out as the docs say: overlays/prod beside the repository's deploy/.
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    prod = tmp_path / "overlays/prod"
    prod.mkdir(parents=True)
    (prod / "kustomization.yaml").write_text(overlay)
    docs = kustomize(prod)
    validate(docs)
    check_router(docs)
    assert one(docs, "ConfigMap")["data"]["REDIS_URL"].startswith("rediss://")
    assert one(docs, "Ingress")["spec"]["tls"][0]["hosts"] == ["router.example.com"]


def test_readme_shows_the_specs_helm_command():
    deployment = (ROOT / "README.md").read_text().split("## Deployment", 1)[1]
    block = re.search(r"```bash\n(helm install .*?)```", deployment, re.S).group(1)
    assert " ".join(block.replace("\\\n", " ").split()) == SPEC_HELM


@pytest.mark.parametrize("command", ["helm install model-router ./charts/model-router", SPEC_HELM])
def test_chart_installs_with_nothing_made_by_hand(command):
    docs = helm_command(command)
    validate(docs)
    router = check_router(docs)
    check_bundled_redis(docs, router)
    check_secrets(docs)
    secret = one(docs, "Secret")
    assert len(base64.b64decode(secret["data"]["admin-key"])) >= 16  # what the router accepts
    assert container(router)["image"].endswith(":latest" if "image.tag" in command else ":0.1.0")
    assert bool(find(docs, "Ingress")) == ("ingress.enabled=true" in command)


def test_chart_with_existing_secrets_external_redis_and_every_option():
    docs = helm_template(
        "router",
        [
            "adminKey.existingSecret=router-admin",
            "providerKeys.existingSecret=provider-keys",
            "redis.enabled=false",
            "redis.existingSecret=redis-conn",
            "extraEnvFrom[0].secretRef.name=more-keys",
            "autoscaling.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "ingress.enabled=true",
            "ingress.className=nginx",
        ],
    )
    validate(docs)
    router = check_router(docs)
    check_secrets(docs, existing={"router-admin", "provider-keys", "redis-conn", "more-keys"})
    check_provider_keys(router, "provider-keys")
    assert not find(docs, "StatefulSet") and not find(docs, "Secret")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert selects(
        monitor["spec"]["selector"]["matchLabels"], one(docs, "Service")["metadata"]["labels"]
    )


@pytest.mark.parametrize("replicas", ["1", "3"])
def test_chart_refuses_to_run_without_a_shared_persistent_store(replicas):
    with pytest.raises(helm_python.HelmError, match="need a shared, persistent store"):
        helm_template("router", ["redis.enabled=false", f"replicaCount={replicas}"])


def test_compose_file_two_routers_behind_one_port_on_a_persistent_redis():
    deploy = ROOT / "deploy"
    compose = compose_spec.PyCompose.from_yaml((deploy / "docker-compose.yml").read_text())
    compose.validate()
    services = compose.to_dict()["services"]
    router, proxy, redis = services["model-router"], services["proxy"], services["redis"]
    assert router["deploy"]["replicas"] == 2 and "ports" not in router
    assert [s for s in services.values() if "ports" in s] == [proxy]
    nginx = (deploy / "nginx.conf").read_text()
    assert "server model-router:3003 " in nginx and "listen 3003;" in nginx
    # Every request comes from nginx: the per-address limits need the client's
    # address, the last entry of the X-Forwarded-For nginx appends to.
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx
    assert router["environment"]["MODEL_ROUTER_CLIENT_ADDRESS_HEADER"] == "X-Forwarded-For"
    # Keys come from an env file whose template is in the repository.
    (env_file,) = router["env_file"]
    example = (deploy / f"{env_file}.example").read_text()
    assert "MODEL_ROUTER_ADMIN_KEY=" in example and "OPENAI_API_KEY=" in example
    assert router["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert router["read_only"] is True and router["user"] == image_instruction("USER")
    assert {"/tmp", image_env()["MODEL_ROUTER_DATA_DIR"]} <= set(router["tmpfs"])
    assert "--appendonly yes" in " ".join(redis["command"])
    (volume,) = redis["volumes"]
    source, target = volume.split(":")
    assert source in compose.volumes and target == "/data"  # a named volume, not the container's


def test_dockerfile_passes_hadolint_and_runs_as_a_numeric_non_root_user():
    done = subprocess.run(
        [tool("hadolint"), "--no-color", str(ROOT / "deploy/Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    uid, gid = image_instruction("USER").split(":")
    assert int(uid) > 0 and int(gid) > 0
    assert image_instruction("HEALTHCHECK") and json.loads(image_instruction("CMD"))


def test_image_build_steps_wheel_into_a_fresh_venv_started_with_the_images_command(
    tmp_path, redis_url
):
    """The Dockerfile's steps, without Docker: `maturin build --release`, the
    wheel installed into a clean venv, then its CMD with its ENV (the data dir,
    a volume in the image, is a temporary directory here) on a real Redis."""
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert "RUN maturin build --release --out /wheels" in dockerfile
    wheels = tmp_path / "wheels"
    subprocess.run(
        [tool("maturin"), "build", "--release", "--quiet", "--out", str(wheels)],
        cwd=ROOT,
        # The venv, as `make build` names it (PyO3's build script reruns when
        # VIRTUAL_ENV changes), and the target/ dir it filled: no rebuild.
        env={
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "VIRTUAL_ENV": str(BIN.parent),
            "CARGO_TARGET_DIR": "target",
        },
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=True)
    subprocess.run([fresh / "bin/pip", "install", "--quiet", wheel], check=True, timeout=300)
    port = free_port()
    env = {
        "PATH": f"{fresh / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **image_env(),
        "PORT": str(port),
        "MODEL_ROUTER_DATA_DIR": str(tmp_path / "data"),
        "MODEL_ROUTER_ADMIN_KEY": "image-test-admin-key-0123456789",
        "REDIS_URL": redis_url,
        "MODEL_ROUTER_REDIS_NAMESPACE": f"image-{port}",
        "MODEL_ROUTER_WORKERS": "1",  # the image's default is one per core; this is a test
    }
    log = tmp_path / "router.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            json.loads(image_instruction("CMD")), cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        wait_live(f"http://127.0.0.1:{port}", proc, log)
        health = json.loads(image_instruction("HEALTHCHECK").split("CMD", 1)[1])
        subprocess.run(health, env=env, check=True, timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DRAIN_SECONDS) == 0, log.read_text()
    finally:
        proc.kill()
        proc.wait()


def wait_live(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until /health answers (readiness semantics are tested with the app)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"no answer from /health in 30 s:\n{log.read_text()}")
