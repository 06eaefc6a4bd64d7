"""meshgate: a Kubernetes admission webhook that enrols pods in a service mesh
and gates NET_ADMIN."""
