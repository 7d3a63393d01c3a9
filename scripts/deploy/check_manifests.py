"""The properties a rollout depends on, checked on rendered manifests.

Usage: check_manifests.py VALUES.yaml RENDERED.yaml [VALUES.yaml RENDERED.yaml ...]
Prints a cargo-style "test result" line so the test command counts the checks.
"""
import base64
import json
import re
import sys

import yaml

SERVICES = ["reservation", "payment", "notify", "mypage"]
# gRPC-level and HTTP-level retry conditions that a pod answered: retrying on
# them would multiply the load the in-app breaker is shedding.
ANSWERED = {"unavailable", "cancelled", "deadline-exceeded", "resource-exhausted",
            "5xx", "gateway-error", "retriable-status-codes", "internal"}
# The documented bound: ApprovePayment calls per CreateReservation (values.yaml, istio).
MAX_PAYMENT_CALLS_PER_BOOKING = 2

passed = 0
failures = []


def check(name, condition, detail=""):
    global passed
    if condition:
        passed += 1
    else:
        failures.append(f"{name}: {detail}")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def deep_merge(base, over):
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def check_render(values_path, rendered_path):
    with open("helm/ssak3/values.yaml") as f:
        values = yaml.safe_load(f)
    if values_path != "-":
        with open(values_path) as f:
            deep_merge(values, yaml.safe_load(f))
    docs = load(rendered_path)
    label = rendered_path
    shutdown = values["shutdown"]

    deployments = by_kind(docs, "Deployment")
    check(f"{label}: a Deployment per service", len(deployments) == len(SERVICES), len(deployments))
    for d in deployments:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        check(f"{name}: pod runs as non-root", pod["securityContext"].get("runAsNonRoot") is True)
        expected_grace = shutdown["preStopSeconds"] + shutdown["drainDelaySeconds"] + shutdown["graceSeconds"] + 5
        check(f"{name}: terminationGracePeriodSeconds covers preStop + drain + grace + stop",
              pod["terminationGracePeriodSeconds"] == expected_grace, pod["terminationGracePeriodSeconds"])
        for c in pod["containers"]:
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
                check(f"{name}: {probe} is a gRPC health probe", "grpc" in c.get(probe, {}), c.get(probe))
            check(f"{name}: liveness asks for the liveness check",
                  c["livenessProbe"]["grpc"].get("service") == "liveness")
            check(f"{name}: readiness asks for the overall status",
                  "service" not in c["readinessProbe"]["grpc"])
            limits = c.get("resources", {}).get("limits", {})
            check(f"{name}: cpu and memory limits", "cpu" in limits and "memory" in limits, limits)
            sc = c.get("securityContext", {})
            check(f"{name}: read-only root filesystem", sc.get("readOnlyRootFilesystem") is True)
            check(f"{name}: no privilege escalation", sc.get("allowPrivilegeEscalation") is False)
            check(f"{name}: all capabilities dropped", sc.get("capabilities", {}).get("drop") == ["ALL"])
            if values["metrics"]["scrape"]:
                annotations = d["spec"]["template"]["metadata"].get("annotations", {})
                ports = {p["containerPort"] for p in c["ports"]}
                check(f"{name}: annotated for scraping on a port it serves",
                      annotations.get("prometheus.io/scrape") == "true"
                      and int(annotations.get("prometheus.io/port", 0)) in ports
                      and annotations.get("prometheus.io/path") == "/metrics", annotations)
                admin = [e["value"] for e in c["env"] if e["name"] == "SSAK3_ADMIN_LISTEN"]
                check(f"{name}: the admin port is the annotated one",
                      admin == [f"0.0.0.0:{annotations.get('prometheus.io/port')}"], admin)
            check(f"{name}: preStop matches the drain",
                  c["lifecycle"]["preStop"]["sleep"]["seconds"] == shutdown["preStopSeconds"])

    release = deployments[0]["metadata"]["labels"]["app.kubernetes.io/instance"]
    config = next(c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == f"{release}-ssak3")["data"]
    check(f"{label}: the app's drain delay is the chart's",
          config["SSAK3_DRAIN_DELAY_MS"] == str(shutdown["drainDelaySeconds"] * 1000))
    check(f"{label}: the app's grace period is the chart's",
          config["SSAK3_SHUTDOWN_GRACE_MS"] == str(shutdown["graceSeconds"] * 1000))

    for s in by_kind(docs, "Service"):
        name = s["metadata"]["name"]
        for port in s["spec"]["ports"]:
            check(f"{name}: port named with its protocol for Istio",
                  port["name"].split("-")[0] in ("grpc", "http", "tcp"), port["name"])
            if port["name"].startswith("grpc-"):
                check(f"{name}: appProtocol grpc", port.get("appProtocol") == "grpc")
        if s["metadata"]["labels"]["app.kubernetes.io/name"] in SERVICES:
            check(f"{name}: the first port is gRPC", s["spec"]["ports"][0]["name"].startswith("grpc-"))
    check_pods(label, docs, values, release)
    check_secrets_stay_secret(label, docs)
    if values["networkPolicy"]["enabled"]:
        check_network_policies(label, docs, values, release)
    autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")}
    budgeted = {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")}
    for d in deployments:
        check(f"{d['metadata']['name']}: has an autoscaler", d["metadata"]["name"] in autoscaled)
        check(f"{d['metadata']['name']}: has a disruption budget", d["metadata"]["name"] in budgeted)

    if not values["istio"]["enabled"]:
        check(f"{label}: no Istio objects when istio is off",
              not [d for d in docs if "istio.io" in d["apiVersion"]])
        return
    namespace = "default"
    reservation_principal = f"cluster.local/ns/{namespace}/sa/{release}-reservation"

    peer = by_kind(docs, "PeerAuthentication")
    check(f"{label}: mTLS is STRICT", peer and all(p["spec"]["mtls"]["mode"] == "STRICT" for p in peer))
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "AuthorizationPolicy")}
    deny = policies.get(f"{release}-deny-by-default", {"rules": ["missing"]})
    check(f"{label}: deny by default (a policy without rules)", "rules" not in deny and "action" not in deny)
    payment = policies.get(f"{release}-payment", {})
    principals = [p for rule in payment.get("rules", []) for src in rule.get("from", [])
                  for p in src.get("source", {}).get("principals", [])]
    check(f"{label}: payment names only reservation's principal",
          principals and set(principals) == {reservation_principal}, principals)
    paths = [p for rule in payment.get("rules", []) for op in rule.get("to", [])
             for p in op.get("operation", {}).get("paths", [])]
    check(f"{label}: ApprovePayment is among the allowed paths",
          "/ssak3.payment.internal.v1.InternalPaymentService/ApprovePayment" in paths)
    ingress = values["istio"]["ingress"]["principal"]
    for service in ["reservation", "notify", "mypage"]:
        spec = policies.get(f"{release}-{service}", {})
        sources = [src["source"] for rule in spec.get("rules", []) for src in rule.get("from", [])]
        check(f"{label}: {service} accepts only the gateway, with a JWT of the configured issuer",
              sources and all(s.get("principals") == [ingress]
                              and s.get("requestPrincipals") == [f"{values['auth']['issuer']}/*"] for s in sources),
              sources)
    checked = {ra["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
               for ra in by_kind(docs, "RequestAuthentication")}
    check(f"{label}: tokens are checked by the mesh on the public services only (payment takes reservation's)",
          checked == {"reservation", "notify", "mypage"}, checked)
    rules = [r for ra in by_kind(docs, "RequestAuthentication") for r in ra["spec"]["jwtRules"]]
    check(f"{label}: the JWT rule expects the configured issuer, with its public keys",
          rules and all(r["issuer"] == values["auth"]["issuer"] and (r.get("jwksUri") or "")
                        == values["auth"]["jwksUrl"] and not jwk_private_members(r.get("jwks", "{}"))
                        for r in rules), rules)

    services = {vs["metadata"]["name"]: vs["spec"] for vs in by_kind(docs, "VirtualService")}
    public = services[f"{release}-public"]
    hosts = {r["destination"]["host"].split(".")[0] for route in public["http"] for r in route["route"]}
    check(f"{label}: the gateway routes only to public services",
          hosts == {f"{release}-{s}" for s in ["reservation", "notify", "mypage"]}, hosts)
    payment_vs = services[f"{release}-payment"]
    payment_retries = payment_vs["http"][0]["retries"]["attempts"]
    check(f"{label}: no mesh retries on reservation → payment", payment_retries == 0, payment_retries)
    app_timeout_ms = int(config["SSAK3_PAYMENT_CLIENT__TIMEOUT_MS"])
    mesh_timeout_ms = float(payment_vs["http"][0]["timeout"].rstrip("s")) * 1000
    check(f"{label}: the mesh timeout on payment exceeds the app's deadline",
          mesh_timeout_ms > app_timeout_ms, (mesh_timeout_ms, app_timeout_ms))
    for route in public["http"]:
        method = route["match"][0]["uri"]["exact"]
        retries = route["retries"]
        conditions = set(filter(None, retries.get("retryOn", "").split(",")))
        if method.split("/")[-1].startswith(("Get", "List", "Watch")):
            continue
        check(f"{label}: {method} is not retried on answers from a pod",
              not (conditions & ANSWERED), conditions & ANSWERED)
        if method.endswith("/CreateReservation"):
            calls = (1 + retries["attempts"]) * (1 + payment_retries)
            check(f"{label}: ApprovePayment calls per booking within the bound",
                  calls <= MAX_PAYMENT_CALLS_PER_BOOKING, calls)
    rules = by_kind(docs, "DestinationRule")
    pool = rules[0]["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"] if rules else 0
    check(f"{label}: payment's connection pool admits what the app's limit lets through",
          pool >= int(config["SSAK3_PAYMENT_CLIENT__CONCURRENCY_LIMIT"]), pool)
    check(f"{label}: payment has outlier detection",
          rules and "outlierDetection" in rules[0]["spec"]["trafficPolicy"])


def pod_specs(docs):
    """(object, pod spec, pod metadata) of every workload, Job and Pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield d, d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"]
        elif d["kind"] == "Pod":
            yield d, d["spec"], d["metadata"]


def check_pods(label, docs, values, release):
    external = values["postgresql"]["external"]["enabled"]
    for d, spec, meta in pod_specs(docs):
        name = f"{d['kind']}/{d['metadata']['name']}"
        check(f"{name}: no service links (SSAK3_* names the services refuse)", spec.get("enableServiceLinks") is False)
        check(f"{name}: no service account token", spec.get("automountServiceAccountToken") is False)
        check(f"{name}: runs as non-root", spec.get("securityContext", {}).get("runAsNonRoot") is True)
        if values["istio"]["enabled"]:
            check(f"{name}: Istio's proxy as a native sidecar",
                  (meta.get("annotations") or {}).get("sidecar.istio.io/nativeSidecar") == "true")
    jobs = [d for d in by_kind(docs, "Job") if d["metadata"]["name"] == f"{release}-migrate"]
    check(f"{label}: a migration Job", len(jobs) == 1)
    if not jobs:
        return
    job = jobs[0]
    hooks = job["metadata"]["annotations"].get("helm.sh/hook", "")
    expected = "pre-install,pre-upgrade" if external else "pre-upgrade"
    check(f"{label}: the migration Job runs {expected}", hooks == expected, hooks)
    job_containers = {c["name"]: c for c in job["spec"]["template"]["spec"]["containers"]}
    check(f"{label}: the migration Job migrates every service", sorted(job_containers) == sorted(SERVICES))
    settings = {c["metadata"]["name"]: c["data"] for c in by_kind(docs, "ConfigMap")}
    check(f"{label}: the migration Job's settings are the services'",
          settings.get(f"{release}-migrate") == settings.get(f"{release}-ssak3"))
    for d in by_kind(docs, "Deployment"):
        service = d["metadata"]["labels"]["app.kubernetes.io/name"]
        pod = d["spec"]["template"]["spec"]
        main = pod["containers"][0]
        database = [e for e in main["env"] if e["name"] in ("SSAK3_DATABASE_URL", "PGPASSWORD")]
        job_env = [e for e in job_containers[service]["env"] if e["name"] in ("SSAK3_DATABASE_URL", "PGPASSWORD")]
        same = [e.get("value") for e in job_env] == [e.get("value") for e in database]
        check(f"{d['metadata']['name']}: the migration Job uses the service's database", same)
        inits = [c for c in pod.get("initContainers", []) if c["name"] == "migrate"]
        if external:
            check(f"{d['metadata']['name']}: no migrating init container with an external database", not inits)
        else:
            check(f"{d['metadata']['name']}: migrates in an init container on install (bundled database)",
                  len(inits) == 1 and inits[0]["args"][:2] == ["migrate", service]
                  and [e for e in inits[0]["env"] if e["name"] in ("SSAK3_DATABASE_URL", "PGPASSWORD")] == database)


# Private key material: PEM private keys, and the private members of JWKs
# (RSA/EC/OKP "d", "p", "q", …; a symmetric key's "k").
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
JWK_PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "k"}



def strings(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


def jwk_private_members(text):
    try:
        parsed = json.loads(text)
    except ValueError:
        return set()
    keys = parsed.get("keys", [parsed]) if isinstance(parsed, dict) else []
    return {m for key in keys if isinstance(key, dict) and "kty" in key for m in JWK_PRIVATE & set(key)}


def check_secrets_stay_secret(label, docs):
    secret_values = set()
    for s in by_kind(docs, "Secret"):
        values = [base64.b64decode(v).decode(errors="replace") for v in (s.get("data") or {}).values()]
        secret_values |= {v for v in values + list((s.get("stringData") or {}).values()) if len(v) >= 8}
    encodings = {}
    for v in secret_values:
        b64 = base64.b64encode(v.encode()).decode()
        for form in (v, b64.rstrip("="), b64.replace("+", "-").replace("/", "_").rstrip("=")):
            encodings[form] = v
    found = set()
    for d in docs:
        if d["kind"] == "Secret":
            continue
        for path, text in strings(d):
            what = []
            if PEM_PRIVATE.search(text):
                what.append("a PEM private key")
            members = jwk_private_members(text)
            if members:
                what.append(f"a JWK with private members {','.join(sorted(members))}")
            what += [f"a Secret's value" for form in encodings if form in text]
            for w in what:
                found.add((d["kind"], f"{path}: {w}", d["metadata"]["name"]))
    check(f"{label}: no private key material or Secret value outside Secrets", not found, sorted(found))


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def allowed(policies, source, dest, port, namespace):
    """Is TCP from pod `source` to `port` of pod `dest` allowed (ingress rules only)?"""
    mine = [p["spec"] for p in policies if selects(p["spec"]["podSelector"], dest["labels"])
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not mine:
        return True
    for spec in mine:
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (port, dest["ports"].get(port)) for p in ports):
                continue
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    ns_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source["namespace"]})
                else:
                    ns_ok = source["namespace"] == namespace
                if ns_ok and selects(peer.get("podSelector", {}), source["labels"]):
                    return True
    return False


def check_network_policies(label, docs, values, release):
    namespace = "default"
    pods = {}
    for d, spec, meta in pod_specs(docs):
        ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if "name" in p}
        pods[meta["labels"]["app.kubernetes.io/name"]] = {"labels": meta["labels"], "namespace": namespace,
                                                           "ports": ports}
    gateway = {"labels": values["istio"]["ingress"]["selector"], "namespace": "istio-system", "ports": {}}
    scraper = {"labels": {}, "namespace": "monitoring", "ports": {}}
    policies = by_kind(docs, "NetworkPolicy")
    public = ["reservation", "notify", "mypage"]
    need = [("reservation", "payment", "grpc"), ("test", "payment", "grpc")]
    need += [("test", s, "grpc") for s in public]
    need += [(gateway, s, "grpc") for s in public] + [(scraper, s, "http-metrics") for s in SERVICES]
    never = [(gateway, "payment", "grpc"), ("notify", "payment", "grpc"), ("mypage", "payment", "grpc"),
             ("payment", "reservation", "grpc"), ("test", "payment", "http-metrics")]
    if "postgresql" in pods:
        need += [(s, "postgresql", "postgresql") for s in SERVICES + ["migrate"]]
        never += [("test", "postgresql", "postgresql"), (gateway, "postgresql", "postgresql")]
    if "rabbitmq" in pods:
        need += [(s, "rabbitmq", "amqp") for s in SERVICES]
        never += [("migrate", "rabbitmq", "amqp"), (gateway, "rabbitmq", "amqp")]
    name = lambda p: p if isinstance(p, str) else p["namespace"]
    for source, dest, port in need:
        src = pods[source] if isinstance(source, str) else source
        check(f"{label}: NetworkPolicies let {name(source)} reach {dest}:{port}",
              allowed(policies, src, pods[dest], port, namespace))
    for source, dest, port in never:
        src = pods[source] if isinstance(source, str) else source
        check(f"{label}: NetworkPolicies keep {name(source)} from {dest}:{port}",
              not allowed(policies, src, pods[dest], port, namespace))


def self_test(values_path, rendered_path):
    """The checks above fail on what they are meant to catch."""
    global passed, failures
    import copy
    with open("helm/ssak3/values.yaml") as f:
        values = yaml.safe_load(f)
    with open(values_path) as f:
        deep_merge(values, yaml.safe_load(f))
    original = load(rendered_path)
    release = by_kind(original, "Deployment")[0]["metadata"]["labels"]["app.kubernetes.io/instance"]
    secret = next(s for s in by_kind(original, "Secret") if s.get("stringData"))
    leaked_value = next(v for v in secret["stringData"].values() if len(v) >= 8)
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"

    def leak_pem(docs):
        by_kind(docs, "ConfigMap")[0]["data"]["SERVICE_KEY"] = pem

    def leak_jwk(docs):
        by_kind(docs, "ConfigMap")[0]["data"]["JWKS"] = json.dumps({"keys": [{"kty": "EC", "d": "x"}]})

    def leak_secret_value(docs):
        by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["x"] = leaked_value

    def open_payment(docs):
        policy = next(p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == f"{release}-payment")
        policy["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]

    def close_database(docs):
        for p in by_kind(docs, "NetworkPolicy"):
            if p["metadata"]["name"].endswith("-postgresql"):
                p["spec"]["ingress"][0]["from"].pop()

    def hook_on_install_only(docs):
        job = next(j for j in by_kind(docs, "Job") if j["metadata"]["name"] == f"{release}-migrate")
        job["metadata"]["annotations"]["helm.sh/hook"] = "post-install"

    cases = [(leak_pem, "no private key material"), (leak_jwk, "no private key material"),
             (leak_secret_value, "no private key material"), (open_payment, "keep notify from payment"),
             (hook_on_install_only, "the migration Job runs")]
    if values["networkPolicy"]["enabled"] and not values["postgresql"]["external"]["enabled"]:
        cases.append((close_database, "let migrate reach postgresql"))
    results = []
    for mutate, expected in cases:
        docs = copy.deepcopy(original)
        mutate(docs)
        saved = passed, failures
        passed, failures = 0, []
        check_pods("self-test", docs, values, release)
        check_secrets_stay_secret("self-test", docs)
        if values["networkPolicy"]["enabled"]:
            check_network_policies("self-test", docs, values, release)
        caught = any(expected in f for f in failures)
        passed, failures = saved
        results.append((mutate.__name__, caught))
    for name, caught in results:
        print(f"self-test: {name} {'caught' if caught else 'NOT caught'}")
        check(f"{rendered_path}: the checks catch {name}", caught)


args = sys.argv[1:]
if args and args[0] == "--self-test":
    self_test(args[1], args[2])
    args = args[3:]
for values_path, rendered_path in zip(args[::2], args[1::2]):
    check_render(values_path, rendered_path)
for failure in failures:
    print(f"FAILED {failure}")
print(f"test result: {'ok' if not failures else 'FAILED'}. {passed} passed; {len(failures)} failed (deploy checks)")
sys.exit(1 if failures else 0)
