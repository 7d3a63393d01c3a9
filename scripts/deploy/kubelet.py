"""Runs a rendered Helm chart on this machine the way a cluster would.

Input: the output of `helm template` (and objects that exist in the cluster
before the release, such as an operator's Secrets). Everything is derived from
the manifests: which containers run, their command and arguments, their
environment, their files, their ports, their probes. Nothing here knows an
environment variable, a Secret key, a port or a service of Ssak3.

What happens, in order (as `helm install`, the kubelet and `helm test` do it):
 1. pre-install hooks, by hook weight (then kind, then name), each created;
    a Job or Pod hook runs to completion and must succeed. Objects of the
    release that are not hooks do not exist yet: a hook that needs one fails,
    as it would in a cluster. Hooks with the hook-succeeded delete policy are
    deleted once every hook of the phase succeeded.
 2. The release's objects are created. Every Deployment and StatefulSet gets
    its pods (replicas, or the HorizontalPodAutoscaler's minReplicas): init
    containers in order, then the containers, then the startup, readiness and
    liveness probes as specified (gRPC health on the port and service named,
    TCP, HTTP, exec).
 3. post-install hooks; then the `helm test` hooks (pods whose command must
    exit 0); then the README walkthrough (--readme) from the operator's
    machine, with every Service port-forwarded to localhost as
    `kubectl port-forward` does, and `ssak3` run inside a pod of --exec-in as
    `kubectl exec` does (so tokens are signed with whatever key material the
    pods hold); then the pre-upgrade and post-upgrade hooks against the
    running release.
 4. Every pod is stopped as the kubelet stops it: preStop, SIGTERM, and it must
    exit 0 within terminationGracePeriodSeconds.

A container runs as a process of the binary the image holds: the Dockerfile's
last stage says where the binary goes (COPY) and how it runs (ENTRYPOINT, CMD,
ENV, USER); the binary comes from --binary, built from the package the
Dockerfile builds. Its environment is exactly the manifest's: the image's ENV,
HOSTNAME, the Service variables (unless enableServiceLinks is false), envFrom
and env (value with $(VAR) expansion, configMapKeyRef, secretKeyRef,
fieldRef), resolved from the ConfigMaps and Secrets that exist at that moment;
a missing object or key stops the pod as the kubelet would, naming the field.
It runs as the securityContext's user and groups, with no new privileges.

Pods on a network of their own. A network namespace plays the node: it holds
a bridge, 10.88.0.1/16. Each pod gets a network namespace with a veth to that
bridge and its own address, so replicas with the same container ports
coexist. Each container runs in a private mount namespace, chrooted into an
overlay of this machine's root filesystem (changes go to a scratch tmpfs):
the binary is bind-mounted at the image's path, the volumes (ConfigMap,
Secret, projected, downwardAPI, emptyDir, persistent claims) are written to a
scratch directory and bind-mounted at their mountPath (read-only where
Kubernetes makes them so), and readOnlyRootFilesystem makes the root
read-only. /etc/hosts is the pod's own, as the kubelet writes it, plus what
the cluster's DNS would answer: each Service name (short and qualified) maps
to the addresses of the pods it selects, and each --external host to a
forwarder. The harness therefore requires a Service's port to equal its
targetPort's number (it says so when they differ).

The one substitution: containers of the PostgreSQL and RabbitMQ images
(--substitute IMAGE=HOST:PORT) are not run; their pods get a forwarder to this
machine's server instead (socat in the pod's namespace to a Unix socket, socat
from there to 127.0.0.1), so the Services in front of them lead to this
machine's servers. Their exec probes are not run (their TCP probes are).
--external HOST:PORT=127.0.0.1:PORT does the same for servers outside the
cluster. The servers' own set-up is not reconfigured.

Every namespace, process, forwarder, database (--cleanup-prefix) and queue made
for a run is removed afterwards, also when the run fails or is interrupted.
Needs root, iproute2, util-linux (nsenter, unshare, mount), socat, psql,
rabbitmqctl and grpcurl. A failure is one message naming the object and field.
"""
import argparse
import base64
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import yaml

HOOK = "helm.sh/hook"
# Helm's install order of kinds, for hooks of the same weight.
KIND_ORDER = ["Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
              "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap",
              "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition",
              "ClusterRole", "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
              "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
              "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
              "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService"]
NODE_IP = "10.88.0.1"
HEALTH_PROTO = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse { enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; } ServingStatus status = 1; }
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class Failure(Exception):
    """What went wrong, naming the object and the field."""


def ref(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def log(message):
    print(f"  {message}", flush=True)


def run(args, check=True, **kw):
    result = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {result.stderr.strip() or result.stdout.strip()}")
    return result


# --- the image -------------------------------------------------------------

def image_config(dockerfile, binary):
    """The last stage of the Dockerfile: where the binary goes and how it runs."""
    text = open(dockerfile).read().replace("\\\n", " ")
    stages = re.split(r"(?im)^FROM\s", text)
    build, final = stages[-2], stages[-1]
    config = {"env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
              "user": "0", "workdir": "/", "entrypoint": [], "cmd": []}
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word in ("ENTRYPOINT", "CMD"):
            config[word.lower()] = json.loads(rest)
        elif word == "USER":
            config["user"] = rest.strip()
        elif word == "WORKDIR":
            config["workdir"] = rest.strip()
        elif word == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                config["env"][key] = value.strip('"')
        elif word == "COPY" and "--from=" in rest:
            config["binary_path"] = rest.split()[-1]
    cargo = re.search(r"cargo build [^&\n]*-p (\S+)", build)
    installed = re.search(r"install -D target/release/(\S+) (\S+)", build)
    if not (cargo and installed and config.get("binary_path") and config["entrypoint"]):
        raise Failure(f"{dockerfile}: no `cargo build -p …`, install, COPY and ENTRYPOINT to follow")
    if config["entrypoint"][0] != config["binary_path"]:
        raise Failure(f"{dockerfile}: ENTRYPOINT {config['entrypoint'][0]} is not the copied binary {config['binary_path']}")
    metadata = json.loads(run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"]).stdout)
    bins = [t["name"] for p in metadata["packages"] if p["name"] == cargo.group(1)
            for t in p["targets"] if "bin" in t["kind"]]
    if installed.group(1) not in bins:
        raise Failure(f"{dockerfile}: package {cargo.group(1)} builds no binary {installed.group(1)} "
                      f"(its binaries: {', '.join(bins) or 'none'})")
    if os.path.basename(binary) != installed.group(1):
        raise Failure(f"{dockerfile} builds {installed.group(1)} (package {cargo.group(1)}); "
                      f"the harness was given {binary}")
    config["package"] = cargo.group(1)
    return config


# --- the cluster's objects -------------------------------------------------

class Cluster:
    def __init__(self, namespace):
        self.namespace = namespace
        self.objects = {}

    def add(self, obj):
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj

    def remove(self, obj):
        self.objects.pop((obj["kind"], obj["metadata"]["name"]), None)

    def get(self, kind, name):
        return self.objects.get((kind, name))

    def of_kind(self, kind):
        return [o for (k, _), o in sorted(self.objects.items()) if k == kind]

    def data(self, kind, name):
        """A ConfigMap's or Secret's data as text, or None if it does not exist."""
        obj = self.get(kind, name)
        if obj is None:
            return None
        data = {}
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value).decode() if kind == "Secret" else value
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value).decode(errors="replace")
        for key, value in (obj.get("stringData") or {}).items():
            data[key] = value
        return data


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def is_hook(obj, phase=None):
    hooks = (obj["metadata"].get("annotations") or {}).get(HOOK)
    if hooks is None:
        return False
    return phase is None or phase in [h.strip() for h in hooks.split(",")]


def hook_order(obj):
    annotations = obj["metadata"].get("annotations") or {}
    kind = KIND_ORDER.index(obj["kind"]) if obj["kind"] in KIND_ORDER else len(KIND_ORDER)
    return (int(annotations.get("helm.sh/hook-weight", "0")), kind, obj["metadata"]["name"])


# --- pods ------------------------------------------------------------------

class Pod:
    """One pod: its owner, spec, address and processes."""

    def __init__(self, owner, name, template, prefix, ip):
        self.owner = owner
        self.name = name
        self.spec = template["spec"]
        self.labels = (template.get("metadata") or {}).get("labels") or {}
        self.annotations = (template.get("metadata") or {}).get("annotations") or {}
        self.prefix = prefix           # the field path of the pod spec in the owner
        self.ip = ip
        self.netns = None
        self.processes = {}            # container name -> Popen
        self.logs = {}
        self.substituted = set()

    def where(self, field):
        return f"{ref(self.owner)}: {self.prefix}.{field}"

    def container_ports(self, container):
        return {p.get("name"): p["containerPort"] for p in container.get("ports", [])}


class Harness:
    def __init__(self, args):
        self.args = args
        self.image = image_config(args.dockerfile, args.binary)
        self.cluster = Cluster(args.namespace)
        self.run_id = uuid.uuid4().hex[:8]
        self.scratch = tempfile.mkdtemp(prefix=f"ssak3-chart-{self.run_id}-")
        self.node = f"s3n-{self.run_id}"
        self.netns = []
        self.background = []           # forwarders: Popen
        self.pods = []
        self.next_ip = 10
        self.veth = 0
        self.substitutes = dict(s.split("=", 1) for s in args.substitute)
        self.external = {}             # host -> (port, target)
        for spec in args.external:
            where, target = spec.split("=", 1)
            host, port = where.rsplit(":", 1)
            self.external.setdefault(host, []).append((int(port), target))
        self.external_ip = {}
        self.health_proto = os.path.join(self.scratch, "health.proto")
        with open(self.health_proto, "w") as f:
            f.write(HEALTH_PROTO)

    # -- network --

    def netns_add(self, name):
        run(["ip", "netns", "add", name])
        self.netns.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def setup_node(self):
        self.netns_add(self.node)
        run(["ip", "-n", self.node, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.node, "addr", "add", f"{NODE_IP}/16", "dev", "br0"])
        run(["ip", "-n", self.node, "link", "set", "br0", "up"])
        for n, (host, ports) in enumerate(sorted(self.external.items())):
            ip = f"10.88.255.{n + 1}"
            run(["ip", "-n", self.node, "addr", "add", f"{ip}/16", "dev", "br0"])
            self.external_ip[host] = ip
            for port, target in ports:
                self.forward(self.node, ip, port, target)

    def pod_network(self, pod):
        pod.netns = f"s3-{self.run_id}-{self.veth}"
        self.veth += 1
        self.netns_add(pod.netns)
        veth = f"v{self.veth}"
        run(["ip", "-n", self.node, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", pod.netns])
        run(["ip", "-n", self.node, "link", "set", veth, "master", "br0", "up"])
        run(["ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/16", "dev", "eth0"])
        run(["ip", "-n", pod.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", pod.netns, "route", "add", "default", "via", NODE_IP])

    def forward(self, netns, ip, port, target):
        """Listens on ip:port in netns and forwards to target on this machine."""
        sock = os.path.join(self.scratch, f"fw-{len(self.background)}.sock")
        host, tport = target.rsplit(":", 1)
        outside = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:{host}:{tport}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.background.append(outside)
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        inside = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "socat",
             f"TCP-LISTEN:{port},bind={ip},fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.background.append(inside)

    def allocate_ip(self):
        ip = f"10.88.{self.next_ip // 250}.{self.next_ip % 250 + 2}"
        self.next_ip += 1
        return ip

    # -- names --

    def hosts_file(self, pod):
        ns = self.cluster.namespace
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        subdomain = pod.spec.get("subdomain")
        hostname = pod.spec.get("hostname", pod.name)
        if subdomain:
            lines.append(f"{pod.ip}\t{hostname}.{subdomain}.{ns}.svc.cluster.local\t{hostname}")
        else:
            lines.append(f"{pod.ip}\t{hostname}")
        lines.append("# Services, as the cluster's DNS would answer")
        for service in self.cluster.of_kind("Service"):
            name = service["metadata"]["name"]
            names = f"{name} {name}.{ns} {name}.{ns}.svc {name}.{ns}.svc.cluster.local"
            for endpoint in self.endpoints(service):
                lines.append(f"{endpoint.ip}\t{names}")
        lines.append("# Outside the cluster")
        for host, ip in sorted(self.external_ip.items()):
            lines.append(f"{ip}\t{host}")
        return "\n".join(lines) + "\n"

    def endpoints(self, service):
        selector = service["spec"].get("selector") or {}
        return [p for p in self.pods if p.netns and selects(selector, p.labels)]

    def check_service(self, service):
        """Each port leads to a container port of every pod behind it."""
        pods = self.endpoints(service)
        if service["spec"].get("selector") and not pods:
            raise Failure(f"{ref(service)}: spec.selector {service['spec']['selector']} selects no pod")
        for i, port in enumerate(service["spec"].get("ports", [])):
            target = port.get("targetPort", port["port"])
            for pod in pods:
                numbers = [n for c in pod.spec["containers"] for name, n in pod.container_ports(c).items()
                           if name == target or n == target]
                if not numbers:
                    raise Failure(f"{ref(service)}: spec.ports[{i}].targetPort {target!r} is no port of pod "
                                  f"{pod.name} ({ref(pod.owner)})")
                if numbers[0] != port["port"]:
                    raise Failure(f"{ref(service)}: spec.ports[{i}]: port {port['port']} → {numbers[0]}: "
                                  "this harness resolves Service names to pod addresses, so it needs "
                                  "port = targetPort")

    # -- environment and files --

    def expand(self, value, env):
        return re.sub(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)",
                      lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)

    def field_value(self, pod, path, where):
        owner = pod.owner
        values = {"metadata.name": pod.name, "metadata.namespace": self.cluster.namespace,
                  "metadata.uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, pod.name)),
                  "spec.nodeName": self.node, "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
                  "status.podIP": pod.ip, "status.hostIP": NODE_IP, "status.podIPs": pod.ip}
        m = re.match(r"metadata\.(labels|annotations)\['(.+)'\]$", path)
        if m:
            return (pod.labels if m.group(1) == "labels" else pod.annotations).get(m.group(2), "")
        if path not in values:
            raise Failure(f"{where}: fieldPath {path} is not supported here ({ref(owner)})")
        return values[path]

    def source(self, kind, name, key, optional, where):
        data = self.cluster.data(kind, name)
        if data is None:
            if optional:
                return None
            raise Failure(f"{where}: {kind} {name} does not exist")
        if key is not None and key not in data:
            if optional:
                return None
            raise Failure(f"{where}: {kind} {name} has no key {key!r}")
        return data if key is None else data[key]

    def service_links(self):
        env = {}
        for service in self.cluster.of_kind("Service"):
            name = service["metadata"]["name"].upper().replace("-", "_")
            pods = self.endpoints(service)
            ip = pods[0].ip if pods else "10.96.0.1"
            ports = service["spec"].get("ports", [])
            if not ports:
                continue
            env[f"{name}_SERVICE_HOST"] = ip
            env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
            env[f"{name}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
            for port in ports:
                proto = port.get("protocol", "TCP")
                base = f"{name}_PORT_{port['port']}_{proto}"
                env[base] = f"{proto.lower()}://{ip}:{port['port']}"
                env[f"{base}_PROTO"] = proto.lower()
                env[f"{base}_PORT"] = str(port["port"])
                env[f"{base}_ADDR"] = ip
                if port.get("name"):
                    env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
        return env

    def container_env(self, pod, container, field):
        env = dict(self.image["env"])
        env["HOSTNAME"] = pod.spec.get("hostname", pod.name)
        links = self.service_links() if pod.spec.get("enableServiceLinks", True) else {}
        defined = {}
        for i, source in enumerate(container.get("envFrom", [])):
            prefix = source.get("prefix", "")
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    data = self.source(kind, source[key]["name"], None, source[key].get("optional", False),
                                       pod.where(f"{field}.envFrom[{i}].{key}"))
                    for k, v in (data or {}).items():
                        if ENV_NAME.match(prefix + k):
                            defined[prefix + k] = v
        for entry in container.get("env", []):
            name = entry["name"]
            where = pod.where(f"{field}.env[{name}]")
            if "valueFrom" not in entry:
                defined[name] = self.expand(entry.get("value", ""), {**links, **defined})
                continue
            source = entry["valueFrom"]
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                key = "secretKeyRef" if "secretKeyRef" in source else "configMapKeyRef"
                kind = "Secret" if key == "secretKeyRef" else "ConfigMap"
                r = source[key]
                value = self.source(kind, r["name"], r["key"], r.get("optional", False),
                                    f"{where}.valueFrom.{key}")
                if value is not None:
                    defined[name] = value
            elif "fieldRef" in source:
                defined[name] = self.field_value(pod, source["fieldRef"]["fieldPath"], f"{where}.valueFrom.fieldRef")
            else:
                raise Failure(f"{where}.valueFrom: {sorted(source)} is not supported here")
        for k, v in links.items():
            defined.setdefault(k, v)
        env.update(defined)
        return env

    def write_file(self, path, content, mode, gid):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)
        os.chown(path, 0, gid)

    def project(self, pod, kind, name, items, mode, optional, target, where, gid):
        data = self.source(kind, name, None, optional, where)
        if data is None:
            return
        chosen = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else \
            [(k, k, mode) for k in data]
        for key, path, file_mode in chosen:
            if key not in data:
                raise Failure(f"{where}: {kind} {name} has no key {key!r}")
            self.write_file(os.path.join(target, path), data[key], file_mode, gid)

    def volumes(self, pod, pod_dir):
        """Writes every volume of the pod; returns name -> (host path, always read-only)."""
        gid = (pod.spec.get("securityContext") or {}).get("fsGroup", 0)
        claims = {t["metadata"]["name"] for t in pod.owner.get("spec", {}).get("volumeClaimTemplates", [])}
        result = {}
        for i, volume in enumerate(pod.spec.get("volumes", [])):
            name = volume["name"]
            target = os.path.join(pod_dir, "volumes", name)
            os.makedirs(target)
            os.chown(target, 0, gid)
            os.chmod(target, 0o755)
            where = pod.where(f"volumes[{name}]")
            if "configMap" in volume or "secret" in volume:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                spec = volume["configMap"] if kind == "ConfigMap" else volume["secret"]
                self.project(pod, kind, spec.get("name") or spec.get("secretName"), spec.get("items"),
                             spec.get("defaultMode", 0o644), spec.get("optional", False), target,
                             f"{where}.{'configMap' if kind == 'ConfigMap' else 'secret'}", gid)
                result[name] = (target, True)
            elif "projected" in volume:
                mode = volume["projected"].get("defaultMode", 0o644)
                for j, source in enumerate(volume["projected"]["sources"]):
                    if "configMap" in source or "secret" in source:
                        kind = "ConfigMap" if "configMap" in source else "Secret"
                        spec = source["configMap"] if kind == "ConfigMap" else source["secret"]
                        self.project(pod, kind, spec["name"], spec.get("items"), mode,
                                     spec.get("optional", False), target, f"{where}.projected.sources[{j}]", gid)
                    elif "downwardAPI" in source:
                        self.downward(pod, source["downwardAPI"]["items"], mode, target, where, gid)
                    else:
                        raise Failure(f"{where}.projected.sources[{j}]: {sorted(source)} is not supported here")
                result[name] = (target, True)
            elif "downwardAPI" in volume:
                self.downward(pod, volume["downwardAPI"]["items"], volume["downwardAPI"].get("defaultMode", 0o644),
                              target, where, gid)
                result[name] = (target, True)
            elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
                os.chmod(target, 0o777)
                result[name] = (target, False)
            else:
                raise Failure(f"{where}: volume type {sorted(k for k in volume if k != 'name')} is not supported here")
        for name in claims - set(result):
            target = os.path.join(pod_dir, "volumes", name)
            os.makedirs(target)
            os.chmod(target, 0o777)
            result[name] = (target, False)
        return result

    def downward(self, pod, items, mode, target, where, gid):
        for item in items:
            if "fieldRef" not in item:
                raise Failure(f"{where}: downwardAPI {sorted(item)} is not supported here")
            path = item["fieldRef"]["fieldPath"]
            if path in ("metadata.labels", "metadata.annotations"):
                values = pod.labels if path == "metadata.labels" else pod.annotations
                content = "".join(f'{k}="{v}"\n' for k, v in sorted(values.items()))
            else:
                content = self.field_value(pod, path, where)
            self.write_file(os.path.join(target, item["path"]), content, item.get("mode", mode), gid)

    # -- containers --

    def identity(self, pod, container, field):
        pod_ctx = pod.spec.get("securityContext") or {}
        ctx = {**pod_ctx, **(container.get("securityContext") or {})}
        user, _, group = self.image["user"].partition(":")
        uid = ctx.get("runAsUser", int(user) if user.isdigit() else None)
        gid = ctx.get("runAsGroup", int(group) if group.isdigit() else 0)
        if uid is None:
            raise Failure(pod.where(f"{field}.securityContext.runAsUser") +
                          f": the image's USER {user} is not numeric; give a runAsUser")
        if ctx.get("runAsNonRoot") and uid == 0:
            raise Failure(pod.where(f"{field}.securityContext.runAsNonRoot") +
                          ": the container would run as root")
        groups = [g for g in [pod_ctx.get("fsGroup")] + pod_ctx.get("supplementalGroups", []) if g is not None]
        return uid, gid, groups, ctx

    def start_container(self, pod, container, field, volumes, pod_dir):
        image = container["image"]
        repo = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
        if repo != self.args.image:
            raise Failure(pod.where(f"{field}.image") + f": {image} is neither the chart's image "
                          f"({self.args.image}) nor a substituted one")
        env = self.container_env(pod, container, field)
        command = [self.expand(a, env) for a in container.get("command", self.image["entrypoint"])]
        args = [self.expand(a, env) for a in container.get("args", self.image["cmd"] if "command" not in container else [])]
        uid, gid, groups, ctx = self.identity(pod, container, field)
        mounts = []
        for i, mount in enumerate(container.get("volumeMounts", [])):
            if mount["name"] not in volumes:
                raise Failure(pod.where(f"{field}.volumeMounts[{i}].name") + f": no volume {mount['name']!r}")
            source, always_ro = volumes[mount["name"]]
            if mount.get("subPath"):
                source = os.path.join(source, mount["subPath"])
                if not os.path.exists(source):
                    os.makedirs(source)
            mounts.append({"source": source, "target": mount["mountPath"],
                           "read_only": always_ro or mount.get("readOnly", False)})
        hosts = self.hosts_file(pod)
        cdir = os.path.join(pod_dir, "containers", container["name"])
        os.makedirs(cdir)
        spec = {"dir": cdir, "binary": os.path.abspath(self.args.binary),
                "binary_path": self.image["binary_path"], "mounts": mounts,
                "etc": {"hosts": hosts, "hostname": pod.spec.get("hostname", pod.name) + "\n",
                        "resolv.conf": f"search {self.cluster.namespace}.svc.cluster.local svc.cluster.local "
                                       "cluster.local\noptions ndots:5\n"},
                "read_only_root": bool(ctx.get("readOnlyRootFilesystem")),
                "uid": uid, "gid": gid, "groups": groups,
                "no_new_privs": ctx.get("allowPrivilegeEscalation") is False,
                "workdir": container.get("workingDir", self.image["workdir"]),
                "argv": command + args, "env": env}
        spec_path = os.path.join(cdir, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        os.chmod(spec_path, 0o600)
        log_path = os.path.join(pod_dir, f"{container['name']}.log")
        out = open(log_path, "w")
        process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{pod.netns}", "unshare", "--mount", "--propagation", "private",
             sys.executable, os.path.abspath(__file__), "--container-init", spec_path],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pod.processes[container["name"]] = process
        pod.logs[container["name"]] = log_path
        return process

    def last_lines(self, pod, container, n=6):
        try:
            lines = open(pod.logs[container]).read().strip().splitlines()
        except (KeyError, OSError):
            return ""
        return "\n      ".join(lines[-n:])

    def exited(self, pod, name, field, what):
        process = pod.processes[name]
        return Failure(pod.where(field) + f": container {name} of pod {pod.name} exited with "
                       f"{process.returncode} {what}:\n      {self.last_lines(pod, name)}")

    # -- pods --

    def make_pod(self, owner, name, template, prefix):
        pod = Pod(owner, name, template, prefix, self.allocate_ip())
        self.pods.append(pod)
        self.pod_network(pod)
        pod.dir = os.path.join(self.scratch, "pods", name)
        os.makedirs(pod.dir)
        pod.volumes = self.volumes(pod, pod.dir)
        return pod

    def substitute(self, pod, container, field):
        for image, target in self.substitutes.items():
            repo = container["image"].rsplit(":", 1)[0]
            if repo == image or repo.endswith("/" + image) or repo.endswith("/library/" + image):
                for port in container.get("ports", []):
                    self.forward(pod.netns, "0.0.0.0", port["containerPort"], target)
                pod.substituted.add(container["name"])
                return True
        return False

    def run_init_containers(self, pod):
        for i, container in enumerate(pod.spec.get("initContainers", [])):
            field = f"initContainers[{container['name']}]"
            if self.substitute(pod, container, field):
                continue
            process = self.start_container(pod, container, field, pod.volumes, pod.dir)
            try:
                process.wait(timeout=self.args.startup_timeout)
            except subprocess.TimeoutExpired:
                raise Failure(pod.where(field) + f": init container of pod {pod.name} did not finish within "
                              f"{self.args.startup_timeout} s:\n      {self.last_lines(pod, container['name'])}")
            if process.returncode != 0:
                raise self.exited(pod, container["name"], field, "(init containers must succeed)")

    def start_workload(self, obj):
        kind, name = obj["kind"], obj["metadata"]["name"]
        replicas = obj["spec"].get("replicas")
        if replicas is None:
            scalers = [h for h in self.cluster.of_kind("HorizontalPodAutoscaler")
                       if h["spec"]["scaleTargetRef"]["name"] == name
                       and h["spec"]["scaleTargetRef"]["kind"] == kind]
            replicas = scalers[0]["spec"].get("minReplicas", 1) if scalers else 1
        template = obj["spec"]["template"]
        selector = obj["spec"]["selector"].get("matchLabels", {})
        if not selects(selector, template["metadata"].get("labels", {})):
            raise Failure(f"{ref(obj)}: spec.selector does not match spec.template.metadata.labels")
        pods = []
        for n in range(replicas):
            pod_name = f"{name}-{n}" if kind == "StatefulSet" else f"{name}-{uuid.uuid4().hex[:9]}-{n}"
            spec = template["spec"]
            if kind == "StatefulSet" and "subdomain" not in spec:
                template = {**template, "spec": {**spec, "hostname": pod_name,
                                                 "subdomain": obj["spec"].get("serviceName")}}
            pods.append(self.make_pod(obj, pod_name, template, "spec.template.spec"))
        return pods

    def start_pod(self, pod):
        self.run_init_containers(pod)
        for container in pod.spec["containers"]:
            field = f"containers[{container['name']}]"
            if not self.substitute(pod, container, field):
                self.start_container(pod, container, field, pod.volumes, pod.dir)

    def run_to_completion(self, obj):
        """A Job's or a Pod's pod, run once; it must succeed."""
        if obj["kind"] == "Job":
            template, prefix = obj["spec"]["template"], "spec.template.spec"
            name = f"{obj['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        else:
            template, prefix, name = obj, "spec", obj["metadata"]["name"]
        restart = template["spec"].get("restartPolicy", "Always")
        if restart not in ("Never", "OnFailure"):
            raise Failure(f"{ref(obj)}: {prefix}.restartPolicy must be Never or OnFailure, not {restart}")
        pod = self.make_pod(obj, name, template, prefix)
        self.start_pod(pod)
        deadline = time.time() + min(obj["spec"].get("activeDeadlineSeconds") or 600, self.args.startup_timeout * 3)
        for cname, process in pod.processes.items():
            try:
                process.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                raise Failure(pod.where(f"containers[{cname}]") + f": pod {pod.name} did not finish:\n      "
                              + self.last_lines(pod, cname))
            if process.returncode != 0:
                raise self.exited(pod, cname, f"containers[{cname}]", "")
        for cname in pod.processes:
            for line in open(pod.logs[cname]).read().strip().splitlines()[-2:]:
                log(f"{pod.name}/{cname}: {line[:200]}")
        self.remove_pod(pod)

    def remove_pod(self, pod):
        for process in pod.processes.values():
            stop_group(process)
        if pod.netns:
            run(["ip", "netns", "del", pod.netns], check=False)
            self.netns.remove(pod.netns)
            pod.netns = None
        self.pods.remove(pod)

    # -- probes --

    def node_exec(self, args, timeout):
        try:
            result = subprocess.run(["nsenter", f"--net=/run/netns/{self.node}"] + args,
                                    capture_output=True, text=True, timeout=timeout + 2)
        except subprocess.TimeoutExpired:
            return False, "timed out"
        return result.returncode == 0, (result.stdout + result.stderr).strip()

    def probe(self, pod, container, kind):
        spec = container[kind]
        timeout = spec.get("timeoutSeconds", 1)
        ports = pod.container_ports(container)

        def port_of(value, field):
            if isinstance(value, int):
                return value
            if value not in ports:
                raise Failure(pod.where(f"containers[{container['name']}].{kind}.{field}") +
                              f": the container has no port named {value!r}")
            return ports[value]
        if "grpc" in spec:
            port = spec["grpc"]["port"]
            service = spec["grpc"].get("service", "")
            ok, out = self.node_exec(["grpcurl", "-plaintext", "-max-time", str(timeout),
                                      "-import-path", os.path.dirname(self.health_proto), "-proto", "health.proto",
                                      "-d", json.dumps({"service": service}), f"{pod.ip}:{port}",
                                      "grpc.health.v1.Health/Check"], timeout)
            serving = ok and '"SERVING"' in out
            return serving, f"grpc.port {port}, service {service!r}: {out.splitlines()[-1] if out else 'no answer'}"
        if "tcpSocket" in spec:
            port = port_of(spec["tcpSocket"]["port"], "tcpSocket.port")
            ok, out = self.node_exec([sys.executable, "-c", "import socket,sys;"
                                      f"socket.create_connection(('{pod.ip}',{port}),{timeout})"], timeout)
            return ok, f"tcpSocket.port {port}: {'open' if ok else out.splitlines()[-1] if out else 'closed'}"
        if "httpGet" in spec:
            get = spec["httpGet"]
            port = port_of(get["port"], "httpGet.port")
            url = f"{get.get('scheme', 'HTTP').lower()}://{pod.ip}:{port}{get.get('path', '/')}"
            ok, out = self.node_exec([sys.executable, "-c", "import urllib.request,sys;"
                                      f"r=urllib.request.urlopen('{url}',timeout={timeout});"
                                      "sys.exit(0 if 200<=r.status<400 else 1)"], timeout)
            return ok, f"httpGet {url}: {out.splitlines()[-1] if out else ''}"
        if "exec" in spec:
            if container["name"] in pod.substituted:
                return True, "exec (not run for a substituted server)"
            ok, out = self.exec_in(pod, container["name"], spec["exec"]["command"], timeout)
            return ok, f"exec {spec['exec']['command']}: {out[-200:]}"
        raise Failure(pod.where(f"containers[{container['name']}].{kind}") + ": no handler")

    def wait_ready(self, pods):
        """Startup, then readiness, then one liveness probe, for every container."""
        deadline = time.time() + self.args.startup_timeout
        pending = [(pod, c) for pod in pods for c in pod.spec["containers"]]
        stage = {(id(p), id(c)): "startupProbe" for p, c in pending}
        last = {}
        while pending:
            for pod, container in list(pending):
                key = (id(pod), id(container))
                name = container["name"]
                process = pod.processes.get(name)
                if process is not None and process.poll() is not None:
                    raise self.exited(pod, name, f"containers[{name}]", f"before its {stage[key]} passed")
                kind = stage[key]
                if kind not in container:
                    ok, what = True, "none"
                else:
                    initial = container[kind].get("initialDelaySeconds", 0)
                    if time.time() - pod.started < initial:
                        continue
                    ok, what = self.probe(pod, container, kind)
                last[key] = what
                if ok:
                    nxt = {"startupProbe": "readinessProbe", "readinessProbe": "livenessProbe"}.get(kind)
                    if nxt is None:
                        pending.remove((pod, container))
                    else:
                        stage[key] = nxt
            if pending and time.time() > deadline:
                pod, container = pending[0]
                key = (id(pod), id(container))
                kind = stage[key]
                raise Failure(pod.where(f"containers[{container['name']}].{kind}") +
                              f" never passed in {self.args.startup_timeout} s (pod {pod.name}): {last.get(key)}"
                              f"\n      {self.last_lines(pod, container['name'])}")
            if pending:
                time.sleep(0.3)

    # -- kubectl exec / port-forward --

    def exec_in(self, pod, container, argv, timeout):
        process = pod.processes[container]
        environ = open(f"/proc/{process.pid}/environ", "rb").read().split(b"\0")
        env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
        status = open(f"/proc/{process.pid}/status").read()
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
        gid = re.search(r"^Gid:\s+(\d+)", status, re.M).group(1)
        try:
            result = subprocess.run(["nsenter", "-t", str(process.pid), "-n", "-m", "-r", "-w",
                                     "-S", uid, "-G", gid, "--"] + argv, env=env,
                                    capture_output=True, text=True, timeout=timeout + 2)
        except subprocess.TimeoutExpired:
            return False, "timed out"
        return result.returncode == 0, result.stdout + result.stderr

    def exec_wrapper(self, target):
        kind, name = target.split("/", 1)
        pods = [p for p in self.pods if p.owner["kind"] == kind and p.owner["metadata"]["name"] == name]
        if not pods:
            raise Failure(f"--exec-in {target}: no such running workload")
        pod = pods[0]
        container = pod.spec["containers"][0]["name"]
        process = pod.processes[container]
        path = os.path.join(self.scratch, "kubectl-exec")
        with open(path, "w") as f:
            f.write(f"""#!{sys.executable}
# kubectl exec {pod.name} -c {container} -- {self.image['binary_path']} ARGS
import os, re, sys
pid = "{process.pid}"
env = dict(e.split(b"=", 1) for e in open(f"/proc/{{pid}}/environ", "rb").read().split(b"\\0") if b"=" in e)
status = open(f"/proc/{{pid}}/status").read()
uid = re.search(r"^Uid:\\s+(\\d+)", status, re.M).group(1)
gid = re.search(r"^Gid:\\s+(\\d+)", status, re.M).group(1)
os.execvpe("nsenter", ["nsenter", "-t", pid, "-n", "-m", "-r", "-w", "-S", uid, "-G", gid, "--",
                       "{self.image['binary_path']}"] + sys.argv[1:], env)
""")
        os.chmod(path, 0o700)
        return path

    def port_forwards(self):
        """`kubectl port-forward svc/NAME PORT:PORT` for every Service port, on the node's localhost."""
        for service in self.cluster.of_kind("Service"):
            pods = self.endpoints(service)
            if not pods:
                continue
            for port in service["spec"].get("ports", []):
                self.background.append(subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{self.node}", "socat",
                     f"TCP-LISTEN:{port['port']},bind=127.0.0.1,fork,reuseaddr",
                     f"TCP:{pods[0].ip}:{port['port']}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(0.2)

    def walkthrough(self, readme, exec_in):
        blocks = readme_blocks(readme)
        if not blocks:
            raise Failure(f"{readme}: no walkthrough blocks")
        wrapper = self.exec_wrapper(exec_in)
        self.port_forwards()
        workdir = os.path.join(self.scratch, "walkthrough")
        os.makedirs(workdir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSAK3_")}
        shell = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.node}", "bash", "--noprofile", "--norc"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, cwd=workdir, env=env, start_new_session=True)
        self.background.append(shell)
        lines = []
        reader = threading.Thread(target=lambda: [lines.append(l) for l in shell.stdout], daemon=True)
        reader.start()
        done = "__walkthrough_block_done__"

        def run_block(script):
            start = len(lines)
            shell.stdin.write(script + f"\necho {done}\n")
            shell.stdin.flush()
            until = time.time() + 60
            while time.time() < until:
                if any(l.strip() == done for l in lines[start:]):
                    out = lines[start:]
                    return "".join(l for l in out if l.strip() != done)
                time.sleep(0.05)
            raise Failure(f"{readme}: a walkthrough block did not finish:\n{script}")
        for n, (expects, script) in enumerate(blocks):
            script = script.replace("cargo run -q --release -p ssak3 --", wrapper)
            started = time.time()
            while True:
                output = run_block(script)
                if all(e in output for e in expects):
                    break
                if time.time() - started > 20:
                    raise Failure(f"{readme}: walkthrough block {n + 1} should print {expects}; it printed:\n"
                                  f"{output}\n---\n{script}")
                time.sleep(0.3)
        log(f"README walkthrough: {len(blocks)} blocks as promised")

    # -- stopping --

    def stop_pod(self, pod, errors):
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        started = time.time()
        for container in pod.spec["containers"]:
            pre = (container.get("lifecycle") or {}).get("preStop") or {}
            if "sleep" in pre:
                time.sleep(pre["sleep"]["seconds"])
            elif "exec" in pre:
                self.exec_in(pod, container["name"], pre["exec"]["command"], grace)
        for name, process in pod.processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in pod.processes.items():
            try:
                process.wait(timeout=max(0.1, grace - (time.time() - started)))
            except subprocess.TimeoutExpired:
                stop_group(process)
                errors.append(pod.where(f"containers[{name}]") + f": pod {pod.name} did not stop within "
                              f"terminationGracePeriodSeconds ({grace} s)")
                continue
            if process.returncode != 0:
                errors.append(str(self.exited(pod, name, f"containers[{name}]", "on SIGTERM")))

    def stop_all(self):
        errors = []
        threads = [threading.Thread(target=self.stop_pod, args=(pod, errors)) for pod in self.pods if pod.processes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise Failure("\n".join(errors))
        log(f"{len(threads)} pods stopped on SIGTERM within their grace period, exit 0")

    # -- the whole run --

    def hooks(self, docs, phase):
        hooks = sorted((d for d in docs if is_hook(d, phase)), key=hook_order)
        for hook in hooks:
            self.cluster.add(hook)
            if hook["kind"] in ("Job", "Pod"):
                log(f"{phase} hook {ref(hook)}")
                self.run_to_completion(hook)
        for hook in hooks:
            policy = (hook["metadata"].get("annotations") or {}).get("helm.sh/hook-delete-policy", "")
            if "hook-succeeded" in policy:
                self.cluster.remove(hook)
        return hooks

    def install(self, docs, existing):
        for obj in existing:
            self.cluster.add(obj)
        self.setup_node()
        self.hooks(docs, "pre-install")
        release = [d for d in docs if not is_hook(d)]
        for obj in sorted(release, key=hook_order):
            self.cluster.add(obj)
        workloads = [d for d in release if d["kind"] in ("Deployment", "StatefulSet")]
        unsupported = [ref(d) for d in release if d["kind"] in ("DaemonSet", "CronJob", "ReplicaSet", "Job", "Pod")]
        if unsupported:
            raise Failure(f"{', '.join(unsupported)}: not run by this harness")
        pods = [p for w in workloads for p in self.start_workload(w)]
        for service in self.cluster.of_kind("Service"):
            self.check_service(service)
        for pod in pods:
            pod.started = time.time()
        # Substituted servers first: they are up already.
        for pod in sorted(pods, key=lambda p: p.owner["kind"] != "StatefulSet"):
            self.start_pod(pod)
        self.wait_ready(pods)
        log(f"{len(pods)} pods ready: " + ", ".join(sorted({ref(p.owner) for p in pods})))
        self.hooks(docs, "post-install")
        return pods

    def cleanup(self):
        for pod in list(self.pods):
            for process in pod.processes.values():
                stop_group(process)
        for process in self.background:
            stop_group(process)
        for name in list(self.netns):
            run(["ip", "netns", "del", name], check=False)
        self.netns.clear()
        if self.args.cleanup_prefix:
            drop_databases(self.args.cleanup_prefix)
            delete_queues(self.args.cleanup_prefix)
        shutil.rmtree(self.scratch, ignore_errors=True)


def stop_group(process):
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def drop_databases(prefix):
    names = run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
                 f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'"], check=False).stdout.split()
    for name in names:
        run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
             f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)


def delete_queues(prefix):
    import pika
    listed = {}
    for what in ("queues", "exchanges"):
        out = run(["rabbitmqctl", "-q", f"list_{what}", "--no-table-headers", "name"], check=False).stdout
        listed[what] = [n for n in out.split() if n.startswith(prefix + ".")]
    if not any(listed.values()):
        return
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    for name in listed["queues"]:
        channel.queue_delete(name)
    for name in listed["exchanges"]:
        channel.exchange_delete(name)
    connection.close()


def readme_blocks(path):
    """The README's `<!-- walkthrough -->` blocks: (expected strings, script)."""
    blocks = []
    lines = iter(open(path).read().splitlines())
    for line in lines:
        marker = line.strip()
        if not marker.startswith("<!-- walkthrough"):
            continue
        rest = marker[len("<!-- walkthrough"):].removesuffix("-->").strip()
        expects = [e.strip() for e in rest.removeprefix("expects:").split(" | ")] if rest.startswith("expects:") else []
        if next(lines).strip() != "```sh":
            raise Failure(f"{path}: a walkthrough marker must precede a sh block")
        script = []
        for body in lines:
            if body.strip() == "```":
                break
            script.append(body)
        blocks.append((expects, "\n".join(script)))
    return blocks


def container_init(spec_path):
    """In the pod's network and a private mount namespace: build the container's root and exec."""
    spec = json.load(open(spec_path))
    d = spec["dir"]
    layer, root = os.path.join(d, "layer"), os.path.join(d, "root")
    os.makedirs(layer)
    os.makedirs(root)

    def mount(*args):
        subprocess.run(["mount", *args], check=True)
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", layer)
    os.makedirs(f"{layer}/upper")
    os.makedirs(f"{layer}/work")
    mount("-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={layer}/upper,workdir={layer}/work", root)
    for name in ("dev", "sys"):
        mount("--rbind", f"/{name}", f"{root}/{name}")
    mount("-t", "proc", "proc", f"{root}/proc")
    binary = root + spec["binary_path"]
    os.makedirs(os.path.dirname(binary), exist_ok=True)
    open(binary, "w").close()
    mount("--bind", spec["binary"], binary)
    mount("-o", "remount,bind,ro", binary)
    for name, content in spec["etc"].items():
        path = f"{root}/etc/{name}"
        if os.path.islink(path):
            os.unlink(path)
        with open(path, "w") as f:
            f.write(content)
    for m in spec["mounts"]:
        target = root + m["target"]
        if os.path.isdir(m["source"]):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        mount("--bind", m["source"], target)
        if m["read_only"]:
            mount("-o", "remount,bind,ro", target)
    if spec["read_only_root"]:
        mount("-o", "remount,bind,ro", root)
    os.chroot(root)
    os.chdir(spec["workdir"])
    if spec["no_new_privs"]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--container-init":
        container_init(sys.argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifests")
    p.add_argument("--existing", help="objects in the cluster before the release (YAML)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--binary", required=True)
    p.add_argument("--dockerfile", default="Dockerfile")
    p.add_argument("--image", required=True, help="the chart's image repository: its containers run --binary")
    p.add_argument("--substitute", action="append", default=[], help="IMAGE=HOST:PORT")
    p.add_argument("--external", action="append", default=[], help="HOST:PORT=HOST:PORT")
    p.add_argument("--readme")
    p.add_argument("--exec-in", help="KIND/NAME whose pod runs `ssak3` for the walkthrough (kubectl exec)")
    p.add_argument("--startup-timeout", type=float, default=30)
    p.add_argument("--cleanup-prefix", help="drop databases and delete queues and exchanges named so")
    args = p.parse_args()
    docs = load(args.manifests)
    existing = load(args.existing) if args.existing else []
    try:
        harness = Harness(args)
    except Failure as failure:
        print(f"FAILED {failure}", flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        harness.install(docs, existing)
        for test in sorted((d for d in docs if is_hook(d, "test")), key=hook_order):
            harness.cluster.add(test)
            if test["kind"] in ("Pod", "Job"):
                log(f"helm test: {ref(test)}")
                harness.run_to_completion(test)
        if args.readme:
            harness.walkthrough(args.readme, args.exec_in)
        harness.hooks(docs, "pre-upgrade")
        harness.hooks(docs, "post-upgrade")
        harness.stop_all()
    except Failure as failure:
        print(f"FAILED {failure}", flush=True)
        return 1
    finally:
        harness.cleanup()
    print("chart ran: hooks, pods, probes, helm test, walkthrough, upgrade hooks, stop", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
