"""Connecting to the Kubernetes API: in-cluster service account, or a kubeconfig file.

Each process builds its own `Configuration` (never the client's global default), so tests
and `--dev` runs cannot pick up a cluster by accident.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import client, config

from .sources import DEFAULT_NAMESPACE

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ClusterConfigError(Exception):
    """No cluster configuration could be loaded; the message says what was tried."""


def own_namespace(flag: str | None, sa_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """--namespace, else the service account's namespace, else meshgate-system."""
    if flag:
        return flag
    try:
        name = sa_file.read_text().strip()
    except OSError:
        name = ""
    return name or DEFAULT_NAMESPACE


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """An ApiClient for `--kubeconfig FILE`, else in-cluster config, else $KUBECONFIG or
    ~/.kube/config (what kubectl would use)."""
    configuration = client.Configuration()
    if kubeconfig:
        _load_kubeconfig(kubeconfig, configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as err:
            raise ClusterConfigError(f"in-cluster configuration: {err}") from None
    else:
        _load_kubeconfig(None, configuration)
    # No hidden retries inside urllib3: the watch loop retries with its own backoff, and a
    # namespace GET on a request's path must give up within its timeout, not after four.
    configuration.retries = False
    return client.ApiClient(configuration)


def _load_kubeconfig(path: str | None, configuration: client.Configuration) -> None:
    # $KUBECONFIG is read now, not when the client library was imported (it reads it once).
    where = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        config.load_kube_config(config_file=where, client_configuration=configuration)
    except (config.ConfigException, OSError, TypeError, ValueError) as err:
        raise ClusterConfigError(f"kubeconfig {where}: {err}") from None
