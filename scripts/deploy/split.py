"""Splits rendered manifests into Kubernetes objects (YAML, for
kubernetes-validate) and Istio objects (JSON lines, for validate-istio.mjs)."""
import json
import sys

import yaml

source, k8s_out, istio_out = sys.argv[1:4]
with open(source) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
with open(k8s_out, "w") as k8s, open(istio_out, "w") as istio:
    for doc in docs:
        if doc["apiVersion"].split("/")[0].endswith("istio.io"):
            istio.write(json.dumps(doc) + "\n")
        else:
            k8s.write("---\n" + yaml.safe_dump(doc))
