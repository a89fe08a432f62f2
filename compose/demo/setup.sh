#!/usr/bin/env bash
# One-shot demo setup, run by the `demo-workload` compose service (scanfleet image, root):
# turn k3s' kubeconfig into one the other containers can use, then deploy the workload.
#
# k3s writes /output/k3s.yaml for https://127.0.0.1:6443 with everything named `default`;
# the workers need https://k3s:6443 (in the cert thanks to --tls-san=k3s) and a context name
# that cannot collide with the operator's own: `scanfleet-demo`.
set -euo pipefail

src=/output/k3s.yaml
dst=/output/kubeconfig

for _ in $(seq 1 90); do
    [[ -s "${src}" ]] && break
    sleep 2
done
[[ -s "${src}" ]] || { echo "demo: k3s never wrote ${src}" >&2; exit 1; }

python3 - "${src}" "${dst}.tmp" <<'PY'
import sys

import yaml

with open(sys.argv[1]) as f:
    cfg = yaml.safe_load(f)
name = "scanfleet-demo"
cluster, user, context = cfg["clusters"][0], cfg["users"][0], cfg["contexts"][0]
cluster["name"] = user["name"] = context["name"] = name
cluster["cluster"]["server"] = "https://k3s:6443"
context["context"].update(cluster=name, user=name, namespace="scanfleet-demo")
cfg.update(clusters=[cluster], users=[user], contexts=[context])
cfg["current-context"] = name
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(cfg, f)
PY
# Readable by the workers' uid: this is a throwaway demo cluster's admin credential.
chmod 0644 "${dst}.tmp"
mv -f "${dst}.tmp" "${dst}"
export KUBECONFIG="${dst}"

for _ in $(seq 1 90); do
    [[ -n "$(kubectl get nodes -o name 2>/dev/null)" ]] && break
    sleep 2
done
kubectl wait --for=condition=Ready node --all --timeout=300s
kubectl apply -f /opt/scanfleet-demo/workload.yaml
kubectl -n scanfleet-demo wait --for=condition=Ready pod --all --timeout=300s
kubectl -n scanfleet-demo get pods -o wide
echo "demo: workload ready; the demo sweep runs every two minutes (see: docker compose logs -f worker)"
