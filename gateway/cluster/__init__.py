"""Several GPU nodes: the cluster plan from a config, its Kubernetes manifests and its CLI."""
