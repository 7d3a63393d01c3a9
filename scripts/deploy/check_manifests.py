"""The properties a rollout depends on, checked on rendered manifests.

Usage: check_manifests.py VALUES.yaml RENDERED.yaml [VALUES.yaml RENDERED.yaml ...]
Prints a cargo-style "test result" line so the test command counts the checks.
"""
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

    config = by_kind(docs, "ConfigMap")[0]["data"]
    check(f"{label}: the app's drain delay is the chart's",
          config["SSAK3_DRAIN_DELAY_MS"] == str(shutdown["drainDelaySeconds"] * 1000))
    check(f"{label}: the app's grace period is the chart's",
          config["SSAK3_SHUTDOWN_GRACE_MS"] == str(shutdown["graceSeconds"] * 1000))

    for s in by_kind(docs, "Service"):
        for port in s["spec"]["ports"]:
            check(f"{s['metadata']['name']}: port named for gRPC", port["name"].startswith("grpc-"), port["name"])
            check(f"{s['metadata']['name']}: appProtocol grpc", port.get("appProtocol") == "grpc")
    autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")}
    budgeted = {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")}
    for d in deployments:
        check(f"{d['metadata']['name']}: has an autoscaler", d["metadata"]["name"] in autoscaled)
        check(f"{d['metadata']['name']}: has a disruption budget", d["metadata"]["name"] in budgeted)

    if not values["istio"]["enabled"]:
        check(f"{label}: no Istio objects when istio is off",
              not [d for d in docs if "istio.io" in d["apiVersion"]])
        return
    release = deployments[0]["metadata"]["labels"]["app.kubernetes.io/instance"]
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
          "/ssak3.payment.v1.PaymentService/ApprovePayment" in paths)
    ingress = values["istio"]["ingress"]["principal"]
    for service in ["reservation", "notify", "mypage"]:
        spec = policies.get(f"{release}-{service}", {})
        sources = [src["source"] for rule in spec.get("rules", []) for src in rule.get("from", [])]
        check(f"{label}: {service} accepts only the gateway, with a JWT",
              sources and all(s.get("principals") == [ingress] and s.get("requestPrincipals") for s in sources),
              sources)
    check(f"{label}: the JWT rule expects issuer ssak3",
          all(r["issuer"] == "ssak3" for ra in by_kind(docs, "RequestAuthentication")
              for r in ra["spec"]["jwtRules"]))

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


args = sys.argv[1:]
for values_path, rendered_path in zip(args[::2], args[1::2]):
    check_render(values_path, rendered_path)
for failure in failures:
    print(f"FAILED {failure}")
print(f"test result: {'ok' if not failures else 'FAILED'}. {passed} passed; {len(failures)} failed (deploy checks)")
sys.exit(1 if failures else 0)
