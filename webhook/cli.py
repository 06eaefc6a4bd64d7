"""The `meshgate` command: serve, explain, policy check."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import certs, logs
from .admission import Context, NamespaceLookup
from .certs_cli import add_certs_commands
from .explain import explain, render_text
from .match import SchemaError
from .namespaces import NamespacesFileError, StaticNamespaces, load_namespaces_file
from .policy import Policy, default_policy
from .sources import DEFAULT_NAMESPACE, read_policy_file

if TYPE_CHECKING:
    from .runtime import Runtime
    from .selfsigned import SelfSigned
    from .watch import ListWatch

DEV_CERT_DIR = "certs/dev"
CLUSTER_CERT_DIR = "/etc/meshgate/tls"

log = logging.getLogger("meshgate")


class UsageError(Exception):
    """A command-line input is unusable; the message says which and why."""


def _policy(path: str | None) -> tuple[Policy, str]:
    if path is None:
        return default_policy(), "embedded default"
    try:
        return read_policy_file(path), f"file {path}"
    except SchemaError as err:
        errors = "\n".join(f"  {e}" for e in err.errors)
        raise UsageError(f"policy {path} is invalid:\n{errors}") from None


def _namespaces(path: str | None) -> StaticNamespaces | None:
    if path is not None:
        try:
            return load_namespaces_file(Path(path))
        except NamespacesFileError as err:
            raise UsageError(str(err)) from None
    return None


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--namespace-labels: {item!r} is not key=value")
        labels[key] = value
    return labels


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from . import kube
    from .app import create_app
    from .runtime import Runtime
    from .server import CertificateError, make_server
    from .watch import stop_all

    logs.configure(args.log_level)
    cert_dir = Path(args.cert_dir or (DEV_CERT_DIR if args.dev else CLUSTER_CERT_DIR))
    if args.dev and certs.ensure_dev_certs(cert_dir):
        log.info(
            "generated a throwaway dev CA and serving certificate", extra={"dir": str(cert_dir)}
        )
    keeper = _self_signed(args, cert_dir) if args.self_signed_secret else None
    for name in (certs.TLS_CERT_FILE, certs.TLS_KEY_FILE):
        if not (cert_dir / name).is_file():
            raise UsageError(f"{cert_dir / name} does not exist (use --cert-dir, or --dev)")
    runtime = Runtime(own_namespace=kube.own_namespace(args.namespace))
    static = _namespaces(args.namespaces_file)
    if static is not None:
        runtime.set_sources(namespaces=static)
    watchers = [] if args.dev else _connect(args, runtime)
    if args.dev or args.policy is not None:
        policy, source = _policy(args.policy)
        runtime.set_policy(policy, source)
    host = args.host or ("127.0.0.1" if args.dev else "0.0.0.0")
    # What exists by now (modules, clients, the policy) lives as long as the process. Out of
    # the garbage collector's sight, the full collections that a large pod's many new
    # objects set off walk only what requests made, not the whole heap: milliseconds less
    # per request on a 1 MB pod.
    gc.collect()
    gc.freeze()
    log.info(
        "serving",
        extra={"url": f"https://{host}:{args.port}", "namespace": runtime.own_namespace,
               "policySource": runtime.policy_source or "ConfigMap (watching)",
               "cluster": bool(watchers), "gcFrozenObjects": gc.get_freeze_count()},
    )  # fmt: skip
    # SIGTERM starts the drain (server.py: not ready, still answering, then a graceful
    # stop). uvicorn raises a signal it stopped on again once it has stopped, as if it had
    # not been handled; ignored then, the watches below are stopped and the process exits 0
    # instead of dying of the signal half-way through its own shutdown.
    in_main = threading.current_thread() is threading.main_thread()  # signals: main only
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if in_main else None
    if keeper is not None:
        keeper.start()  # the Secret, the files and the caBundles, re-checked every minute
    try:
        try:
            server = make_server(create_app(runtime), host, args.port, cert_dir,
                                 runtime=runtime, drain_seconds=args.drain_seconds)  # fmt: skip
        except CertificateError as err:
            raise UsageError(f"serving certificate: {err}") from None
        server.run()
    finally:
        stop_all(watchers)
        if keeper is not None:
            keeper.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _connect(args: argparse.Namespace, runtime: Runtime) -> list[ListWatch]:
    """Start the cluster watches that the flags leave to the cluster."""
    from . import cluster, kube

    wants_cluster = args.policy is None or args.namespaces_file is None
    try:
        api = kube.api_client(args.kubeconfig)
    except kube.ClusterConfigError as err:
        if wants_cluster:
            raise UsageError(
                f"no cluster configuration ({err}); give --kubeconfig, run in a cluster, or "
                "serve offline with --policy and --namespaces-file (or --dev)"
            ) from None
        log.info("no cluster configuration: the NetworkAttachmentDefinition check is off")
        return []
    return cluster.connect(
        runtime, api, policy=args.policy is None, namespaces=args.namespaces_file is None
    )


def _self_signed(args: argparse.Namespace, cert_dir: Path) -> SelfSigned:
    """--self-signed-secret: settle the Secret, write its files into `cert_dir` and patch the
    caBundles, before anything is served; the keeper returned re-checks once started."""
    from . import kube, selfsigned

    if args.dev:
        raise UsageError("--self-signed-secret needs a cluster: it does not go with --dev")
    try:
        api = kube.api_client(args.kubeconfig)
    except kube.ClusterConfigError as err:
        raise UsageError(f"--self-signed-secret needs a cluster: {err}") from None
    keeper = selfsigned.SelfSigned(
        api, namespace=kube.own_namespace(args.namespace), secret=args.self_signed_secret,
        service=args.service, webhook_configuration=args.webhook_configuration,
        cert_dir=cert_dir,
    )  # fmt: skip
    try:
        keeper.sync()
    except selfsigned.SelfSignedError as err:
        raise UsageError(f"--self-signed-secret: {err}") from None
    return keeper


def cmd_explain(args: argparse.Namespace) -> int:
    if args.namespaces_file and args.namespace_labels is not None:
        raise UsageError("give --namespaces-file or --namespace-labels, not both")
    policy, _ = _policy(args.policy)
    namespaces: NamespaceLookup | None = _namespaces(args.namespaces_file)
    if namespaces is None:
        # --namespace-labels: whichever namespace an object names has these labels.
        labels = _parse_labels(args.namespace_labels or "")

        def namespaces(_name: str) -> Mapping[str, str]:
            return labels

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        docs = list(yaml.safe_load_all(text))
    except OSError as err:
        raise UsageError(f"{args.file}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{args.file}: not valid YAML: {err}") from None
    results = explain(docs, Context(policy, namespaces, args.own_namespace))
    if args.output == "json":
        print(json.dumps({"policy": policy.version, "results": results}, indent=2))
    else:
        print(f"policy {policy.version}\n")
        print(render_text(results), end="")
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    try:
        policy = read_policy_file(args.file)
    except SchemaError as err:
        print(f"{args.file}: invalid ({len(err.errors)} errors)")
        for error in err.errors:
            print(f"  error: {error}")
        return 1
    for warning in policy.warnings:
        print(f"  warning: {warning}")
    print(f"{args.file}: valid, policy version {policy.version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshgate",
        description="Admission webhook that enrols pods in the mesh and gates NET_ADMIN.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook over HTTPS")
    serve.add_argument("--policy", help="policy file (instead of the ConfigMap)")
    serve.add_argument("--namespaces-file", help="YAML Namespace objects giving namespace labels")
    serve.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG)")
    serve.add_argument(
        "--namespace",
        help="the webhook's own namespace (default: the service account's, else meshgate-system)",
    )
    serve.add_argument(
        "--cert-dir", help=f"directory with tls.crt and tls.key (dev: {DEV_CERT_DIR})"
    )
    serve.add_argument("--host", help="listen address (default 0.0.0.0; 127.0.0.1 with --dev)")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument(
        "--dev", action="store_true", help="never contact a cluster; make dev certificates"
    )
    serve.add_argument(
        "--self-signed-secret", metavar="NAME",
        help="keep the serving certificate in this Secret of the webhook's namespace (made if "
        "absent or empty) and its CA in the webhook configurations' caBundle",
    )  # fmt: skip
    serve.add_argument(
        "--service", default="meshgate", metavar="NAME",
        help="the Service the API server calls, named by the certificate "
        "(with --self-signed-secret; default meshgate)",
    )  # fmt: skip
    serve.add_argument(
        "--webhook-configuration", default="meshgate", metavar="NAME",
        help="the Mutating- and ValidatingWebhookConfiguration whose caBundle is kept "
        "(with --self-signed-secret; default meshgate)",
    )  # fmt: skip
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--drain-seconds", type=_seconds, default=5.0,
        help="on SIGTERM, answer this long while not ready before closing (default 5)",
    )  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    exp = sub.add_parser("explain", help="show the decision and patch for each pod in a file")
    exp.add_argument("file", help="YAML file of Pods and workloads ('-' for standard input)")
    exp.add_argument("--policy", help="policy file (default: the embedded default policy)")
    exp.add_argument("--namespaces-file", help="YAML Namespace objects giving namespace labels")
    exp.add_argument("--namespace-labels", help="labels of the namespace, as k=v,k2=v2")
    exp.add_argument("--own-namespace", default=DEFAULT_NAMESPACE, help="the webhook's namespace")
    exp.add_argument("-o", "--output", choices=["text", "json"], default="text")
    exp.set_defaults(func=cmd_explain)

    pol = sub.add_parser("policy", help="policy tools")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    check = pol_sub.add_parser("check", help="validate a policy file (or its ConfigMap)")
    check.add_argument("file")
    check.set_defaults(func=cmd_policy_check)

    add_certs_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except UsageError as err:
        print(f"meshgate: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
