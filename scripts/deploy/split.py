"""Splits rendered manifests into Kubernetes objects (YAML, for
kubernetes-validate) and custom resources of Istio and the Prometheus Operator
(JSON lines, for validate-crds.mjs)."""
import json
import sys

import yaml

CUSTOM = ("istio.io", "monitoring.coreos.com")

source, k8s_out, custom_out = sys.argv[1:4]
with open(source) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
with open(k8s_out, "w") as k8s, open(custom_out, "w") as custom:
    for doc in docs:
        if doc["apiVersion"].split("/")[0].endswith(CUSTOM):
            custom.write(json.dumps(doc) + "\n")
        else:
            k8s.write("---\n" + yaml.safe_dump(doc))
