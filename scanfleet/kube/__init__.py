"""The Kubernetes adapter, and the only package that imports kubernetes or urllib3: client
(requests by resource path as the admin), transport, kubeconfig, scan_client (the scan
token's own requests).
"""
