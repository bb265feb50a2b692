"""Kubernetes: a container's place in its pod (``pod``) and what the kubelet
allocated to it (``kubelet``, the PodResources client)."""
