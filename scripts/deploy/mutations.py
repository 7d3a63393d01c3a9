"""Wiring mistakes the chart could make, each of which must make the chart run
(kubelet.py) fail with a message naming the object and the field (and, where
the service itself refuses, the variable it refused).

Usage: mutations.py RENDERED.yaml OUT_DIR -- KUBELET_ARGS…
Each mutation changes one thing in the rendered manifests, runs kubelet.py on
the result and expects it to fail saying all of the mutation's words. Prints a
cargo-style "test result" line so the test command counts the checks.
"""
import copy
import subprocess
import sys
import time

import yaml


def find(docs, kind, name):
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise SystemExit(f"mutations: the render has no {kind}/{name}")


def container(doc, name):
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env(doc, name, variable):
    return next(e for e in container(doc, name)["env"] if e["name"] == variable)


def wrong_probe_port(docs):
    container(find(docs, "Deployment", "ssak3-payment"), "payment")["startupProbe"]["grpc"]["port"] = 50099


def misspelt_env_name(docs):
    env(find(docs, "Deployment", "ssak3-reservation"), "reservation", "SSAK3_DATABASE_URL")["name"] = \
        "SSAK3_DATABSE_URL"


def misspelt_secret_key(docs):
    ref = env(find(docs, "Deployment", "ssak3-notify"), "notify", "SSAK3_AMQP_URL")["valueFrom"]["secretKeyRef"]
    ref["key"] = "amqp-lur"


def wrong_service_keys_path(docs):
    env(find(docs, "Deployment", "ssak3-payment"), "payment", "SSAK3_AUTH__SERVICE_KEYS_FILE")["value"] = \
        "/etc/ssak3/service/reservation.pem"


def missing_migration_hook(docs):
    docs.remove(find(docs, "Job", "ssak3-migrate"))


def hook_needs_a_release_object(docs):
    job = find(docs, "Job", "ssak3-migrate")
    for c in job["spec"]["template"]["spec"]["containers"]:
        c["envFrom"][0]["configMapRef"]["name"] = "ssak3-ssak3"


def wrong_liveness_service(docs):
    container(find(docs, "Deployment", "ssak3-reservation"), "reservation")["livenessProbe"]["grpc"]["service"] = \
        "livenes"


def service_links_left_on(docs):
    del find(docs, "Deployment", "ssak3-mypage")["spec"]["template"]["spec"]["enableServiceLinks"]


def wrong_target_port(docs):
    find(docs, "Service", "ssak3-payment")["spec"]["ports"][0]["targetPort"] = "grcp"


# (mutation, words the failure must say)
MUTATIONS = [
    (wrong_probe_port, ["Deployment/ssak3-payment", "containers[payment].startupProbe", "grpc.port 50099"]),
    (misspelt_env_name, ["Deployment/ssak3-reservation", "containers[reservation]", "exited with 1", "databse_url"]),
    (misspelt_secret_key, ["Deployment/ssak3-notify", "containers[notify].env[SSAK3_AMQP_URL].valueFrom.secretKeyRef",
                           "no key 'amqp-lur'"]),
    (wrong_service_keys_path, ["Deployment/ssak3-payment", "containers[payment]", "exited with 1", "reservation.pem"]),
    (missing_migration_hook, ["Deployment/ssak3-", "exited with 1 before its startupProbe passed", "does not exist"]),
    (hook_needs_a_release_object, ["Job/ssak3-migrate", "envFrom[0].configMapRef", "ConfigMap ssak3-ssak3 does not exist"]),
    (wrong_liveness_service, ["Deployment/ssak3-reservation", "containers[reservation].livenessProbe", "'livenes'"]),
    (service_links_left_on, ["Deployment/ssak3-mypage", "containers[mypage]", "exited with 1", "mypage_port"]),
    (wrong_target_port, ["Service/ssak3-payment", "spec.ports[0].targetPort 'grcp'"]),
]


# The image: the Dockerfile must run the binary it builds where it copies it.
DOCKERFILE_MUTATIONS = [
    ("entrypoint_elsewhere", 'ENTRYPOINT ["/usr/local/bin/ssak3"]', 'ENTRYPOINT ["/usr/bin/ssak3"]',
     ["Dockerfile", "ENTRYPOINT /usr/bin/ssak3 is not the copied binary /usr/local/bin/ssak3"]),
    ("another_package", "cargo build --release --locked -p ssak3", "cargo build --release --locked -p ssak3-bench",
     ["Dockerfile", "package ssak3-bench builds no binary ssak3"]),
]


def main():
    rendered, out_dir = sys.argv[1], sys.argv[2]
    kubelet_args = sys.argv[sys.argv.index("--") + 1:]
    with open(rendered) as f:
        original = [d for d in yaml.safe_load_all(f) if d]
    passed, failed = 0, []
    for mutate, words in MUTATIONS:
        docs = copy.deepcopy(original)
        mutate(docs)
        path = f"{out_dir}/mutation-{mutate.__name__}.yaml"
        with open(path, "w") as f:
            yaml.safe_dump_all(docs, f)
        started = time.time()
        result = subprocess.run([sys.executable, "scripts/deploy/kubelet.py", path, *kubelet_args],
                                capture_output=True, text=True)
        output = result.stdout + result.stderr
        message = next((l for l in output.splitlines() if l.startswith("FAILED ")), "")
        said = output[output.find("FAILED "):] if message else ""
        # Case aside: the services name a variable as SSAK3_X or as its key x.
        if result.returncode == 1 and all(w.lower() in said.lower() for w in words):
            passed += 1
            print(f"mutation {mutate.__name__}: caught in {time.time() - started:.1f} s: {message[7:][:220]}")
        else:
            failed.append(mutate.__name__)
            print(f"mutation {mutate.__name__}: NOT caught as expected (exit {result.returncode}); "
                  f"expected {words} in:\n{output[-3000:]}")
    dockerfile = open("Dockerfile").read()
    for name, old, new, words in DOCKERFILE_MUTATIONS:
        if old not in dockerfile:
            raise SystemExit(f"mutations: the Dockerfile no longer says {old!r}")
        path = f"{out_dir}/Dockerfile.{name}"
        with open(path, "w") as f:
            f.write(dockerfile.replace(old, new))
        result = subprocess.run([sys.executable, "scripts/deploy/kubelet.py", rendered, *kubelet_args,
                                 "--dockerfile", path], capture_output=True, text=True)
        said = result.stdout[result.stdout.find("FAILED "):] if "FAILED " in result.stdout else ""
        if result.returncode == 1 and all(w in said for w in words):
            passed += 1
            print(f"mutation Dockerfile {name}: caught: {said[7:].strip()[:200]}")
        else:
            failed.append(f"Dockerfile {name}")
            print(f"mutation Dockerfile {name}: NOT caught as expected; expected {words} in:\n"
                  f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    print(f"test result: {'ok' if not failed else 'FAILED'}. {passed} passed; {len(failed)} failed (chart mutations)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
