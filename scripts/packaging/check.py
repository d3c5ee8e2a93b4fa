"""Packaging checks for event-ingestor: the Helm chart, the plain manifests, the Dockerfile, compose,
skaffold and the CI workflow — checked against each other and against the binary itself.

Run by scripts/check-packaging.sh, which installs the tools first. The binary is the authority: what it
accepts and serves comes from `event-ingestor describe`, and the rendered settings are started for real.
Prints one PASS/FAIL line per check and a summary; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate.utils as kv_utils
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "event-ingestor"
HERE = Path(__file__).resolve().parent

# Kubernetes versions every rendering is validated against: the chart's floor and the newest that
# kubernetes-validate bundles.
K8S_MIN = "1.30"

# Settings the chart renders only behind a values flag, for features the binary is gaining. While
# `describe` does not list them, the "pending" rendering reports them instead of failing; a ci/ values
# file that enables them fails the env check like any other unknown name. (SPOOL_DIR and API_KEYS_FILE
# started here too, until the binary accepted them.)
PENDING_FEATURES = {
    "tracing.enabled=true": ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME",
                             "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES"],
}

SPOOL_PATH = "/var/lib/event-ingestor/spool"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|SASL_USERNAME|API_KEY(?!S_FILE)")


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.notes: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f" ({detail})" if detail else ""))
        else:
            self.failed.append(name)
            print(f"FAIL {name}: {detail}")
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE {text}")


R = Report()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------------------------------
# The binary's own description


class Binary:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.describe = json.loads(run([str(path), "describe"], check=True).stdout)
        self.env_names = {e["name"] for e in self.describe["env"]}
        self.env_defaults = {e["name"]: e["default"] for e in self.describe["env"]}
        self.env_prefixes = list(self.describe.get("env_prefixes", []))
        self.env_other = set(self.describe.get("env_other", []))
        self.probes = self.describe["probes"]

    def accepts(self, name: str) -> bool:
        return (name in self.env_names or name in self.env_other
                or any(name.startswith(p) for p in self.env_prefixes))

    def default_port(self, setting: str) -> int:
        return int(self.env_defaults[setting])


# --------------------------------------------------------------------------------------------------
# Rendering


class Helm:
    def __init__(self, path: str) -> None:
        self.path = path

    def template(self, values: list[Path] = (), sets: list[str] = (), kube_version: str | None = None,
                 skip_tests: bool = False, release: str = "ci", namespace: str = "ci") -> subprocess.CompletedProcess:
        cmd = [self.path, "template", release, str(CHART), "--namespace", namespace]
        for v in values:
            cmd += ["-f", str(v)]
        for s in sets:
            cmd += ["--set", s]
        if kube_version:
            cmd += ["--kube-version", kube_version]
        if skip_tests:
            cmd.append("--skip-tests")
        return run(cmd)

    def lint(self, values: Path) -> subprocess.CompletedProcess:
        return run([self.path, "lint", "--strict", str(CHART), "-f", str(values)])


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def kind_name(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# --------------------------------------------------------------------------------------------------
# Schema validation


@functools.lru_cache(maxsize=None)
def _cached_schema(filename: str, version: str):
    return _original_schema_contents(filename, version)


_original_schema_contents = kv_utils.schema_contents
kv_utils.schema_contents = _cached_schema  # the bundled schemas are read once, not once per resource

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
}


def validate_docs(label: str, docs: list[dict]) -> None:
    versions = [K8S_MIN, kv_utils.major_minor(kv_utils.latest_version())]
    errors, crds = [], []
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            schema = json.loads((HERE / "crd-schemas" / CRD_SCHEMAS[key]).read_text())
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
                errors.append(f"{kind_name(doc)}: {'.'.join(map(str, e.path))}: {e.message}")
            crds.append(doc["kind"])
            continue
        for version in versions:
            try:
                kv_utils.validate(doc, version, strict=True)
            except kv_utils.ValidationError as e:
                errors.append(f"{kind_name(doc)} @ {version}: {'.'.join(map(str, e.path))}: {e.message}")
            except kv_utils.SchemaNotFoundError as e:
                errors.append(f"{kind_name(doc)} @ {version}: no schema ({e.message})")
    detail = f"{len(docs)} objects vs Kubernetes {' and '.join(versions)} (strict)"
    if crds:
        detail += f"; CRDs {', '.join(sorted(set(crds)))} vs the subset schemas in scripts/packaging/crd-schemas"
    R.check(f"{label}: schema", not errors, "; ".join(errors[:5]) if errors else detail)


# --------------------------------------------------------------------------------------------------
# Facts about a rendering, compared with the binary


def container_env(container: dict, configmaps: dict[str, dict]) -> tuple[dict[str, str], list[str], list[str]]:
    """The environment a container gets: (name → value or a placeholder, names from secretKeyRefs,
    unresolved envFrom sources)."""
    env, secret_refs, unresolved = {}, [], []
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef", {}).get("name")
        if ref in configmaps:
            env.update({k: str(v) for k, v in (configmaps[ref].get("data") or {}).items()})
        else:
            unresolved.append(json.dumps(src, sort_keys=True))
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            env[e["name"]] = "<from " + ",".join(e.get("valueFrom", {}).keys()) + ">"
            if "secretKeyRef" in e.get("valueFrom", {}):
                secret_refs.append(e["name"])
    return env, secret_refs, unresolved


def quantity(value) -> float:
    """A Kubernetes resource quantity in base units (bytes for sizes)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?", str(value))
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    factor = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}[m.group(2)]
    return float(m.group(1)) * factor


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_restricted(label: str, pod_spec: dict) -> None:
    """Pod Security Standard "restricted", plus the read-only root this image allows."""
    problems = []
    psc = pod_spec.get("securityContext", {})
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        n = c["name"]
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{n}: runAsNonRoot")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            problems.append(f"{n}: numeric non-zero runAsUser (got {uid!r})")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{n}: allowPrivilegeEscalation false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            problems.append(f"{n}: capabilities drop [ALL], add nothing")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{n}: seccompProfile RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{n}: readOnlyRootFilesystem true")
        if sc.get("privileged"):
            problems.append(f"{n}: privileged")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod: seccompProfile RuntimeDefault")
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(forbidden):
            problems.append(f"pod: {forbidden}")
    for v in pod_spec.get("volumes", []):
        if "hostPath" in v:
            problems.append(f"volume {v['name']}: hostPath")
    R.check(f"{label}: restricted security context", not problems, "; ".join(problems))


def check_rendering(label: str, docs: list[dict], binary: Binary, pending: list[str] = ()) -> dict:
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    deployments = by_kind.get("Deployment", [])
    if not R.check(f"{label}: one Deployment", len(deployments) == 1, f"found {len(deployments)}"):
        return {}
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "event-ingestor")
    env, secret_refs, unresolved = container_env(c, configmaps)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    # Ports: the container ports are the ones the binary is told to listen on.
    problems = []
    for setting, port_name in (("HTTP_PORT", "http"), (binary.probes["port_setting"], "admin")):
        want = int(env.get(setting, binary.default_port(setting)))
        if ports.get(port_name) != want:
            problems.append(f"containerPort {port_name}={ports.get(port_name)} but {setting}={want}")
    R.check(f"{label}: container ports = HTTP_PORT/ADMIN_PORT", not problems, "; ".join(problems)
            or f"http {ports.get('http')}, admin {ports.get('admin')}")

    # Probes: the paths the binary serves, on its admin listener.
    problems = []
    for probe, path_key in (("startupProbe", "liveness"), ("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        p = c.get(probe)
        if not p:
            problems.append(f"{probe} missing")
            continue
        get = p.get("httpGet", {})
        port = get.get("port")
        port = ports.get(port, port) if isinstance(port, str) else port
        if get.get("path") != binary.probes[path_key]:
            problems.append(f"{probe} path {get.get('path')} != {binary.probes[path_key]}")
        if port != ports.get("admin"):
            problems.append(f"{probe} port {get.get('port')} is not the admin port")
    R.check(f"{label}: probes = describe ({binary.probes['liveness']}, {binary.probes['readiness']} on admin)",
            not problems, "; ".join(problems))

    # Grace period: longer than everything the shutdown may take.
    drain = seconds(env.get("SHUTDOWN_DRAIN_DELAY", binary.env_defaults["SHUTDOWN_DRAIN_DELAY"]))
    budget = seconds(env.get("SHUTDOWN_TIMEOUT", binary.env_defaults["SHUTDOWN_TIMEOUT"]))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    R.check(f"{label}: terminationGracePeriodSeconds > preStop + drain delay + shutdown timeout",
            grace > pre_stop + drain + budget, f"{grace} > {pre_stop} + {drain:g} + {budget:g}")
    if "exec" in c.get("lifecycle", {}).get("preStop", {}):
        R.check(f"{label}: preStop", False, "exec hooks cannot work: the image has no shell")

    # Every environment name the chart sets is one the binary accepts.
    unknown = sorted(n for n in env if not binary.accepts(n))
    waiting = [n for n in unknown if n in pending]
    unknown = [n for n in unknown if n not in pending]
    R.check(f"{label}: every env var is accepted by the binary", not unknown,
            f"not in describe: {', '.join(unknown)}" if unknown else f"{len(env)} names")
    if waiting:
        R.note(f"{label}: waiting for the binary to accept {', '.join(waiting)} (describe does not list them yet)")
    if unresolved:
        R.note(f"{label}: envFrom sources outside the chart are not checked: {'; '.join(unresolved)}")

    # Secrets: only through secretKeyRef, never in the ConfigMap or as literal values.
    leaks = [n for n, v in env.items() if SECRET_NAME.search(n) and n not in secret_refs]
    for cm in configmaps.values():
        leaks += [f"ConfigMap key {k}" for k in (cm.get("data") or {}) if SECRET_NAME.search(k)]
    R.check(f"{label}: secret settings come from Secrets", not leaks, ", ".join(leaks)
            or (f"secretKeyRef: {', '.join(secret_refs)}" if secret_refs else "none set"))

    # The spool directory is always a writable volume; the root filesystem is read-only.
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    spool = mounts.get(SPOOL_PATH)
    R.check(f"{label}: emptyDir at {SPOOL_PATH}", bool(spool) and "emptyDir" in vols.get(spool, {}))
    if binary.accepts("SPOOL_DIR"):
        R.check(f"{label}: SPOOL_DIR is the spool volume", env.get("SPOOL_DIR") == SPOOL_PATH, str(env.get("SPOOL_DIR")))
        limit = quantity(vols.get(spool, {}).get("emptyDir", {}).get("sizeLimit", "0")) if spool else 0
        cap = int(env.get("SPOOL_MAX_BYTES", binary.env_defaults.get("SPOOL_MAX_BYTES", "0")))
        R.check(f"{label}: spool emptyDir sizeLimit > SPOOL_MAX_BYTES (else the pod is evicted first)",
                limit > cap, f"{limit} > {cap}")
    keys_file = env.get("API_KEYS_FILE")
    if keys_file:
        mounted = any(keys_file.startswith(m.rstrip("/") + "/") and "secret" in vols.get(n, {})
                      and not any(vm.get("subPath") for vm in c.get("volumeMounts", []) if vm["name"] == n)
                      for m, n in mounts.items())
        R.check(f"{label}: API_KEYS_FILE is in a Secret volume (no subPath, so changes reach the pod)", mounted,
                keys_file)

    check_restricted(f"{label}: Deployment", pod)
    for p in by_kind.get("Pod", []):
        check_restricted(f"{label}: {kind_name(p)}", p["spec"])

    # Replica bounds: a PDB only where more than one pod runs; HPA and KEDA never together.
    hpas, scaled = by_kind.get("HorizontalPodAutoscaler", []), by_kind.get("ScaledObject", [])
    floor = (hpas[0]["spec"].get("minReplicas", 1) if hpas else
             scaled[0]["spec"].get("minReplicaCount", 0) if scaled else dep["spec"].get("replicas", 1))
    pdbs = by_kind.get("PodDisruptionBudget", [])
    R.check(f"{label}: PodDisruptionBudget only with more than one pod", not (pdbs and floor <= 1),
            f"{len(pdbs)} PDB, at least {floor} pod(s)")
    R.check(f"{label}: at most one autoscaler", len(hpas) + len(scaled) <= 1)
    if (hpas or scaled) and "replicas" in dep["spec"]:
        R.check(f"{label}: autoscaled Deployment leaves replicas to the autoscaler", False, "spec.replicas is set")

    # Selectors: the Service and monitors reach the pods, and the helm test pod is not among them.
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    problems = []
    for d in by_kind.get("Service", []) + by_kind.get("ServiceMonitor", []) + by_kind.get("PodMonitor", []) \
            + by_kind.get("PodDisruptionBudget", []):
        sel = d["spec"]["selector"]
        sel = sel.get("matchLabels", sel) if d["kind"] != "Service" else sel
        if not all(pod_labels.get(k) == v for k, v in sel.items()):
            problems.append(f"{kind_name(d)} does not select the pods")
        for p in by_kind.get("Pod", []):
            if all(p["metadata"].get("labels", {}).get(k) == v for k, v in sel.items()):
                problems.append(f"{kind_name(d)} selects {kind_name(p)}")
    R.check(f"{label}: selectors", not problems, "; ".join(problems))

    return {"env": env, "secret_refs": secret_refs, "container": c, "pod": pod, "by_kind": by_kind}


# --------------------------------------------------------------------------------------------------
# Starting the binary with the rendered settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 2.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, ""


class Files:
    """Stand-ins for the files the pod would have mounted (a throwaway self-signed certificate)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key_password = "dummy-passphrase"
        self.api_keys = tmp / "api-keys.json"
        self.api_keys.write_text(json.dumps({"keys": [{"tenant": "check-packaging", "key": "check-packaging-dummy-api-key"}]}))
        self.ok = False
        if shutil.which("openssl"):
            r = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=check-packaging",
                     "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"),
                     "-passout", f"pass:{self.key_password}"])
            self.ok = r.returncode == 0

    def stand_in(self, path: str) -> str:
        name = Path(path).name
        if name.endswith((".key", "-key.pem")) or name == "tls.key":
            return str(self.tmp / "key.pem")
        return str(self.tmp / "cert.pem")


@contextlib.contextmanager
def started(binary: Binary, env: dict[str, str], log: Path):
    proc = subprocess.Popen([str(binary.path)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            cwd=log.parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def process_env(rendered_env: dict[str, str], secret_refs: list[str], files: Files) -> tuple[dict, int, int]:
    """The rendered environment, runnable here: secrets get dummies, mounted files stand-ins, the spool a
    fresh directory, the ports free ones."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name, value in rendered_env.items():
        if name in secret_refs:
            value = files.key_password if name == "KAFKA_PROPERTY_SSL_KEY_PASSWORD" else "dummy-secret"
        elif value.startswith("/etc/event-ingestor/") and name.endswith("_LOCATION"):
            value = files.stand_in(value)
        elif name == "API_KEYS_FILE":
            value = str(files.api_keys)
        elif name == "SPOOL_DIR":
            value = tempfile.mkdtemp(prefix="spool-", dir=files.tmp)
        env[name] = value
    http_port, admin_port = free_port(), free_port()
    env["HTTP_PORT"], env["ADMIN_PORT"] = str(http_port), str(admin_port)
    return env, http_port, admin_port


def wait_for(fn, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    return None


def log_excerpt(log: Path) -> str:
    """The lines that say why the process stopped, else the end of its log."""
    lines = log.read_text().splitlines()
    errors = [l for l in lines if '"level":"ERROR"' in l or not l.startswith("{")]
    return " | ".join(errors)[-600:] if errors else "\n".join(lines)[-600:]


def check_settings_accepted(label: str, facts: dict, binary: Binary, files: Files, tmp: Path) -> None:
    """The binary starts with the rendered settings (exit 2 would mean it refused them)."""
    if any(v.startswith("/etc/event-ingestor/") and n.endswith("_LOCATION") for n, v in facts["env"].items()) \
            and not files.ok:
        R.note(f"{label}: settings not started (openssl unavailable for stand-in certificates)")
        return
    env, _, admin = process_env(facts["env"], facts["secret_refs"], files)
    log = tmp / f"{re.sub(r'[^a-z0-9]+', '-', label.lower())}.log"
    with started(binary, env, log) as proc:
        live = wait_for(lambda: proc.poll() is not None or http("GET", f"http://127.0.0.1:{admin}/livez")[0] == 200, 15)
        code = proc.poll()
    out = log_excerpt(log)
    R.check(f"{label}: the binary starts with the rendered settings", code is None and live,
            f"exit {code}: {out}" if code is not None else ("/livez 200" if live else f"no /livez: {out}"))


def check_lifecycle(label: str, facts: dict, binary: Binary, files: Files, tmp: Path) -> None:
    """The default rendering, for real (brokers → the embedded mock cluster): ready, accepts an event as
    the helm test does, serves the metric the autoscalers use, and drains on SIGTERM within the grace
    period."""
    env, http_port, admin = process_env(facts["env"], facts["secret_refs"], files)
    env["KAFKA_BROKERS"] = "embedded"
    base, adm = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{admin}"
    log = tmp / "lifecycle.log"
    grace = facts["pod"].get("terminationGracePeriodSeconds", 30)
    pre_stop = facts["container"].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    with started(binary, env, log) as proc:
        ready = wait_for(lambda: http("GET", adm + binary.probes["readiness"])[0] == 200, 30)
        if not R.check(f"{label}: ready with the embedded cluster", bool(ready), "" if ready else log_excerpt(log)):
            return
        status, body = http("POST", base + "/events", b'{"type":"helm-test","payload":{}}',
                            {"content-type": "application/json"}, timeout=15)
        expect = 200 if facts["env"].get("ACK_MODE") == "kafka" else 202
        R.check(f"{label}: the helm test's POST /events gets {expect}", status == expect, f"{status} {body[:200]}")
        _, metrics = http("GET", adm + binary.probes["metrics"])
        hpa_metrics = set()
        for d in facts["by_kind"].get("HorizontalPodAutoscaler", []):
            hpa_metrics |= {m["pods"]["metric"]["name"] for m in d["spec"]["metrics"] if m["type"] == "Pods"}
        wanted = {"ingest_queue_utilization", "ingest_queue_size", "ingest_queue_capacity"} | hpa_metrics
        missing = [m for m in sorted(wanted) if not re.search(rf"^{m}(\{{| )", metrics, re.M)]
        R.check(f"{label}: /metrics serves the autoscaling metrics", not missing, "missing: " + ", ".join(missing)
                if missing else ", ".join(sorted(wanted)))
        # Kubernetes: preStop sleep, then SIGTERM; the grace period runs from the start of the hook.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        not_ready = wait_for(lambda: http("GET", adm + binary.probes["readiness"])[0] == 503, 2, 0.05)
        R.check(f"{label}: SIGTERM turns /readyz 503 at once", bool(not_ready))
        serving = http("GET", base + "/health")[0]
        R.check(f"{label}: still serving during the drain delay", serving == 200, f"GET /health -> {serving}")
        try:
            code = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
        R.check(f"{label}: exits 0 within terminationGracePeriodSeconds", code == 0 and pre_stop + took < grace,
                f"exit {code} after {took:.1f}s + preStop {pre_stop}s (grace {grace}s)")


# --------------------------------------------------------------------------------------------------
# Other files


def check_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
        ok, detail = True, "valid draft-07"
    except jsonschema.SchemaError as e:
        ok, detail = False, e.message
    R.check("values.schema.json is a valid draft-07 schema", ok, detail)

    open_objects = []

    def walk(node, path):
        """Every object schema that lists its properties must close them (additionalProperties false)."""
        if not isinstance(node, dict):
            return
        if "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path or "/")
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}/{name}")
        for key in ("items", "additionalProperties"):
            walk(node.get(key), f"{path}/{key}")
        for key in ("oneOf", "anyOf", "allOf"):
            for i, sub in enumerate(node.get(key, [])):
                walk(sub, f"{path}/{key}/{i}")

    # values.yaml documents every key: a comment right above it or above one of its enclosing sections.
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, stack = [], []  # stack: (indent, documented) of the enclosing sections
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(\s|$)", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = (i > 0 and lines[i - 1].strip().startswith("#")) or any(d for _, d in stack)
        is_section = line.rstrip().endswith(":")
        if is_section:
            stack.append((indent, documented))
        elif not documented:
            undocumented.append(m.group(2))
    R.check("values.yaml documents every value", not undocumented, ", ".join(undocumented))


def check_invalid_values(helm: Helm) -> None:
    for f in sorted((HERE / "invalid-values").glob("*.yaml")):
        expect = re.search(r"#\s*expect:\s*(\w+)", f.read_text()).group(1)
        r = helm.template([f])
        stage = "schema" if "don't meet the specifications of the schema" in r.stderr else "template"
        R.check(f"invalid values {f.name} are refused", r.returncode != 0 and stage == expect,
                f"by the {stage}" if r.returncode else "helm template succeeded")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile(binary: Binary, hadolint: str) -> None:
    path = ROOT / "Dockerfile"
    text = path.read_text()
    r = run([hadolint, "--no-color", "--failure-threshold", "warning", str(path)])
    R.check("Dockerfile: hadolint", r.returncode == 0, (r.stdout + r.stderr).strip() or "clean")

    ins = dockerfile_instructions(text)
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    final = ins[stages[-1]:]
    final_from = ins[stages[-1]][1]
    users = [v for w, v in final if w == "USER"]
    R.check("Dockerfile: multi-stage, distroless runtime", len(stages) >= 2 and "distroless" in final_from,
            final_from)
    R.check("Dockerfile: runs as numeric non-root user", bool(users) and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1])
            is not None, f"USER {users[-1] if users else '(none)'}")
    exposed = sorted(int(p.split("/")[0]) for w, v in final if w == "EXPOSE" for p in v.split())
    want = sorted([binary.default_port("HTTP_PORT"), binary.default_port(binary.probes["port_setting"])])
    R.check("Dockerfile: EXPOSE = the binary's default ports", exposed == want, f"{exposed} vs {want}")
    entry = [v for w, v in final if w == "ENTRYPOINT"]
    R.check("Dockerfile: exec-form ENTRYPOINT (no shell in the image)", bool(entry) and entry[-1].startswith("["),
            entry[-1] if entry else "none")
    env_names = [m.group(1) for w, v in final if w == "ENV" for m in re.finditer(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", v)]
    unknown = [n for n in env_names if not binary.accepts(n)]
    R.check("Dockerfile: ENV names are accepted by the binary", not unknown, ", ".join(unknown) or ", ".join(env_names))
    R.check("Dockerfile: dependencies cached in their own layer (cargo-chef)",
            "cargo chef cook" in text and "cargo chef prepare" in text)

    # The build context: what COPY needs is there and not excluded by .dockerignore.
    ignore = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "src"]
    excluded = [n for n in needed if any(p.strip("/") == n for p in ignore)]
    missing = [n for n in needed if not (ROOT / n).exists()]
    R.check(".dockerignore keeps the workspace and drops target/ and .git",
            not excluded and not missing and "**/target" in ignore and ".git" in ignore,
            f"excluded {excluded}, missing {missing}" if excluded or missing else "")


def check_compose(binary: Binary, cj: str) -> None:
    path = ROOT / "docker-compose.yml"
    doc = yaml.safe_load(path.read_text())
    r = run([cj, "--builtin-schema", "vendor.compose-spec", str(path)])
    R.check("docker-compose.yml: compose-spec schema", r.returncode == 0, (r.stdout + r.stderr).strip()[-400:])
    services = doc.get("services", {})
    missing = []
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = ctx / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            missing += [str(p.relative_to(ROOT)) for p in (ctx, dockerfile) if not p.exists()]
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not (ROOT / src).exists():
                    missing.append(src)
        if not build and ":" not in svc.get("image", ":"):
            missing.append(f"{name}: image without a pinned tag")
    R.check("docker-compose.yml: referenced files exist and images are pinned", not missing, ", ".join(missing))
    for wanted in ("kafka", "event-ingestor", "prometheus", "jaeger", "grafana"):
        R.check(f"docker-compose.yml: service {wanted}", wanted in services)
    svc = services.get("event-ingestor", {})
    env = svc.get("environment", {})
    env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
    R.check("docker-compose.yml: event-ingestor uses the compose Kafka", env.get("KAFKA_BROKERS") == "kafka:9092",
            str(env.get("KAFKA_BROKERS")))
    unknown = sorted(n for n in env if not binary.accepts(n))
    if unknown:
        R.note("docker-compose.yml sets names the binary does not accept yet (ignored by it until then): "
               + ", ".join(unknown))
    # Prometheus scrapes the admin port's /metrics.
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    admin = f"event-ingestor:{binary.default_port(binary.probes['port_setting'])}"
    targets = [t for job in prom.get("scrape_configs", []) for sc in job.get("static_configs", [])
               for t in sc.get("targets", []) if job.get("metrics_path", "/metrics") == binary.probes["metrics"]]
    R.check("deploy/prometheus/prometheus.yml scrapes the admin port's /metrics", admin in targets, str(targets))


def check_skaffold(binary: Binary) -> None:
    path = ROOT / "skaffold.yaml"
    docs = docs_of(path.read_text())
    doc = docs[0]
    problems = []
    if not re.fullmatch(r"skaffold/v4beta\d+", doc.get("apiVersion", "")) or doc.get("kind") != "Config":
        problems.append(f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')}")
    refs = []
    for a in doc.get("build", {}).get("artifacts", []):
        ctx = ROOT / a.get("context", ".")
        refs.append(ctx / a.get("docker", {}).get("dockerfile", "Dockerfile"))
    releases = doc.get("deploy", {}).get("helm", {}).get("releases", [])
    for rel in releases:
        refs.append(ROOT / rel["chartPath"])
        refs += [ROOT / v for v in rel.get("valuesFiles", [])]
    profiles = {p["name"]: p for p in doc.get("profiles", [])}
    for p in profiles.values():
        refs += [ROOT / m for m in p.get("manifests", {}).get("rawYaml", [])]
    problems += [f"missing {p.relative_to(ROOT)}" for p in refs if not p.exists()]
    for want in ("dev", "kafka"):
        if want not in profiles:
            problems.append(f"no profile {want}")
    fwd = {pf.get("port") for pf in profiles.get("dev", {}).get("portForward", [])}
    want_ports = {binary.default_port("HTTP_PORT"), binary.default_port(binary.probes["port_setting"])}
    if fwd != want_ports:
        problems.append(f"dev port-forward {sorted(fwd)} != {sorted(want_ports)}")
    R.check("skaffold.yaml: parses, references existing files, dev + kafka profiles", not problems,
            "; ".join(problems) or f"{doc['apiVersion']}, {len(refs)} files")


def check_dev_kafka_wiring() -> None:
    """`skaffold -p kafka` and k8s/values.yaml point the service at the Service of k8s/dev/kafka.yaml."""
    services = {f"{d['metadata']['name']}:{p['port']}" for d in docs_of((ROOT / "k8s/dev/kafka.yaml").read_text())
                if d["kind"] == "Service" for p in d["spec"]["ports"]}
    doc = docs_of((ROOT / "skaffold.yaml").read_text())[0]
    profile = next(p for p in doc.get("profiles", []) if p["name"] == "kafka")
    brokers = {"skaffold -p kafka": next((str(p["value"]) for p in profile.get("patches", [])
                                          if p.get("path", "").endswith("/setValues/kafka.brokers")), None),
               "k8s/values.yaml": yaml.safe_load((ROOT / "k8s/values.yaml").read_text())["kafka"]["brokers"]}
    wrong = [f"{k}: {v}" for k, v in brokers.items() if v not in services]
    R.check("skaffold -p kafka and k8s/values.yaml use the Service of k8s/dev/kafka.yaml", not wrong,
            "; ".join(wrong) + f" (services: {sorted(services)})" if wrong else ", ".join(sorted(services)))


def check_skaffold_values(helm: Helm, binary: Binary) -> None:
    """What skaffold deploys: the chart with the release's setValues, with and without the profiles."""
    doc = docs_of((ROOT / "skaffold.yaml").read_text())[0]
    rel = doc["deploy"]["helm"]["releases"][0]
    base = {k: str(v) for k, v in rel.get("setValues", {}).items()}
    combos = {"skaffold (no profile)": []}
    for p in doc.get("profiles", []):
        combos[f"skaffold -p {p['name']}"] = [p]
    for label, profs in combos.items():
        values = dict(base)
        for p in profs:
            for patch in p.get("patches", []):
                if "/setValues/" in patch.get("path", ""):
                    values[patch["path"].split("/setValues/")[-1]] = str(patch["value"])
        sets = [f"{k}={v}" for k, v in values.items()]
        values_files = [ROOT / v for v in rel.get("valuesFiles", [])]
        r = helm.template(values_files, sets + ["image.repository=event-ingestor", "image.tag=dev"])
        if R.check(f"{label}: chart renders", r.returncode == 0, r.stderr.strip()[-300:]):
            check_rendering(label, docs_of(r.stdout), binary)


def check_workflow(cj: str) -> None:
    path = ROOT / ".github/workflows/ci.yml"
    r = run([cj, "--builtin-schema", "vendor.github-workflows", str(path)])
    R.check(".github/workflows/ci.yml: GitHub workflow schema", r.returncode == 0, (r.stdout + r.stderr).strip()[-400:])
    text = path.read_text()
    missing = [s for s in ("cargo fmt", "clippy", "-D warnings", "make test", "setup-java",
                           "scripts/check-packaging.sh", "docker/build-push-action") if s not in text]
    R.check(".github/workflows/ci.yml: fmt, clippy, tests, packaging checks, image build", not missing,
            "missing " + ", ".join(missing) if missing else "")


def check_generated_k8s(gen: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        r = run([str(gen), "--out", tmp])
        if not R.check("k8s/: scripts/gen-k8s.sh runs", r.returncode == 0, r.stderr.strip()[-300:]):
            return
        stale = []
        for f in sorted(Path(tmp).iterdir()):
            committed = ROOT / "k8s" / f.name
            if not committed.exists() or committed.read_text() != f.read_text():
                stale.append(f.name)
        R.check("k8s/ is up to date with the chart (scripts/gen-k8s.sh)", not stale,
                "run scripts/gen-k8s.sh; stale: " + ", ".join(stale) if stale else "")


# --------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--hadolint", required=True)
    ap.add_argument("--check-jsonschema", required=True)
    args = ap.parse_args()

    started_at = time.monotonic()
    # A private copy: describe and every run use the same build, even while cargo relinks the original.
    bin_dir = tempfile.TemporaryDirectory(prefix="check-packaging-bin-")
    shutil.copy2(args.binary, Path(bin_dir.name) / "event-ingestor")
    binary = Binary(Path(bin_dir.name) / "event-ingestor")
    helm = Helm(args.helm)
    print(f"event-ingestor {binary.describe['version']} (copy of {args.binary}): {len(binary.env_names)} settings, "
          f"prefixes {binary.env_prefixes}, other {sorted(binary.env_other)}")

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    R.check("Chart.yaml appVersion = the binary's version", chart["appVersion"] == binary.describe["version"],
            f"{chart['appVersion']} vs {binary.describe['version']}")
    check_values_schema()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        files = Files(tmp)
        default_facts = None
        for values in sorted((CHART / "ci").glob("*.yaml")):
            label = f"ci/{values.name}"
            r = helm.lint(values)
            R.check(f"{label}: helm lint --strict", r.returncode == 0,
                    "" if r.returncode == 0 else (r.stdout + r.stderr).strip()[-400:])
            r = helm.template([values], kube_version=f"{K8S_MIN}.0")
            if not R.check(f"{label}: helm template (Kubernetes {K8S_MIN})", r.returncode == 0, r.stderr.strip()[-400:]):
                continue
            docs = docs_of(r.stdout)
            validate_docs(label, docs)
            facts = check_rendering(label, docs, binary)
            if facts:
                check_settings_accepted(label, facts, binary, files, tmp)
            if values.name == "default-values.yaml":
                default_facts = facts

        # Features behind flags that the binary is still gaining: rendered and validated; their settings
        # are reported while describe does not list them.
        sets = list(PENDING_FEATURES)
        pending = [n for names in PENDING_FEATURES.values() for n in names]
        r = helm.template([CHART / "ci/default-values.yaml"], sets)
        label = "pending features (" + ", ".join(s.split("=")[0] for s in sets) + ")"
        if R.check(f"{label}: helm template", r.returncode == 0, r.stderr.strip()[-400:]):
            docs = docs_of(r.stdout)
            validate_docs(label, docs)
            check_rendering(label, docs, binary, pending=pending)

        check_invalid_values(helm)

        if default_facts:
            check_lifecycle("ci/default-values.yaml", default_facts, binary, files, tmp)

        # The plain manifests.
        k8s_docs = docs_of((ROOT / "k8s/event-ingestor.yaml").read_text())
        validate_docs("k8s/event-ingestor.yaml", k8s_docs)
        facts = check_rendering("k8s/event-ingestor.yaml", k8s_docs, binary)
        dev_kafka = docs_of((ROOT / "k8s/dev/kafka.yaml").read_text())
        validate_docs("k8s/dev/kafka.yaml", dev_kafka)
        check_generated_k8s(ROOT / "scripts/gen-k8s.sh")

    check_dockerfile(binary, args.hadolint)
    check_compose(binary, args.check_jsonschema)
    check_skaffold(binary)
    check_skaffold_values(helm, binary)
    check_dev_kafka_wiring()
    check_workflow(args.check_jsonschema)

    took = time.monotonic() - started_at
    print()
    for n in R.notes:
        print(f"note: {n}")
    if R.failed:
        print("failed checks:")
        for f in R.failed:
            print(f"  - {f}")
    print(f"check-packaging took {took:.0f}s")
    print(f"packaging: {R.passed} passed, {len(R.failed)} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
