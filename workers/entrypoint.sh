#!/usr/bin/env bash
# Entry point of the scanfleet image.
#
# 1. In a Kubernetes pod with no KUBECONFIG, write a kubeconfig that points at the pod's own
#    service account (scanfleet addresses clusters by kubeconfig context, so it needs one):
#    context `in-cluster`, server https://kubernetes.default.svc, the mounted CA file and
#    `tokenFile` — a path, never a copy of the token, so the kubelet's token rotation is
#    picked up and no credential lands in a second file. Written 0600 in a 0700 directory
#    under $TMPDIR (a memory-backed emptyDir in deploy/).
# 2. Dispatch: no arguments → `scanfleet worker`; a scanfleet command or an option →
#    scanfleet, even where a system program has the same name (`diff A B` is scanfleet's
#    drift, never GNU diff); an explicit program — a path, or a name found on PATH (celery,
#    cinc-auditor, bash) — is exec'd as given; anything else → scanfleet, which names an
#    unknown command. Always `exec`, so tini's signals reach the real process.
#    SCANFLEET_COMMANDS must list every command of `scanfleet --help`; tests/deploy/test_deploy.py
#    runs each of them through this script.
#
# It must never print the token or the kubeconfig.
set -euo pipefail

SA_DIR="${SCANFLEET_SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}"
IN_CLUSTER_SERVER="${SCANFLEET_IN_CLUSTER_SERVER:-https://kubernetes.default.svc}"

write_in_cluster_kubeconfig() {
    local dir="${TMPDIR:-/tmp}/scanfleet-in-cluster"
    local namespace="default"
    if [[ -r "${SA_DIR}/namespace" ]]; then
        namespace="$(<"${SA_DIR}/namespace")"
    fi
    (
        umask 077
        mkdir -p "${dir}"
        chmod 0700 "${dir}"
        cat >"${dir}/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: in-cluster
  cluster:
    server: ${IN_CLUSTER_SERVER}
    certificate-authority: ${SA_DIR}/ca.crt
users:
- name: in-cluster
  user:
    tokenFile: ${SA_DIR}/token
contexts:
- name: in-cluster
  context:
    cluster: in-cluster
    user: in-cluster
    namespace: ${namespace}
current-context: in-cluster
EOF
        chmod 0600 "${dir}/kubeconfig.tmp"
        mv -f "${dir}/kubeconfig.tmp" "${dir}/kubeconfig"
    )
    export KUBECONFIG="${dir}/kubeconfig"
}

if [[ -z "${KUBECONFIG:-}" && -r "${SA_DIR}/token" && -r "${SA_DIR}/ca.crt" ]]; then
    write_in_cluster_kubeconfig
fi

if [[ $# -eq 0 ]]; then
    set -- worker
fi

SCANFLEET_COMMANDS=" beat diff janitor prune report scan status submit sweeps worker "

if [[ "$1" == -* || "${SCANFLEET_COMMANDS}" == *" $1 "* ]]; then
    exec scanfleet "$@"
fi
if [[ "$1" == */* ]] || command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec scanfleet "$@"
