"""scanfleet: compliance scans of running containers across Kubernetes fleets.

Each scan gets its own throwaway, least-privilege identity (ServiceAccount, Role pinned to
one pod, RoleBinding, short-lived token), runs CINC Auditor over the `k8s-container://`
transport, is judged against SAF-CLI-style thresholds, and removes every trace.
"""

__version__ = "0.1.0"
