"""`meshgate certs`: make, check and package the webhook's serving certificate.

- ``certs generate`` writes a CA and a serving certificate for the webhook's Service into a
  directory and prints the ``caBundle`` (base64 of ``ca.crt``) on standard output, and
  nothing else there, so that ``CA_BUNDLE=$(meshgate certs generate ...)`` works; what it did
  goes to standard error.
- ``certs check`` reports the chain, the SANs, days to expiry and whether the key matches;
  exit status 1 when anything is wrong, so it can run in CI or a CronJob.
- ``certs secret`` prints the ``kubernetes.io/tls`` Secret manifest for the files.

Exit status: 0 success, 1 a check failed or the files are unusable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

import yaml

from . import certs

DEFAULT_SERVICE = "meshgate"
DEFAULT_NAMESPACE = "meshgate-system"
DEFAULT_SECRET = "meshgate-tls"
DEFAULT_MIN_DAYS = 30


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _dns(text: str) -> str:
    try:
        certs.validate_dns_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _error(command: str, message: str, code: int) -> int:
    print(f"meshgate certs {command}: {message}", file=sys.stderr)
    return code


def cmd_certs_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _error("generate", f"{out} exists and is not a directory", 2)
    existing = certs.existing_cert_files(out)
    if existing and not args.force:
        return _error(
            "generate",
            f"{out} already holds {', '.join(existing)}; refusing to overwrite "
            "(use --force to replace them, or choose another --out)",
            2,
        )
    try:
        generated = certs.generate_service_certs(
            args.service,
            args.namespace,
            dns_names=args.dns,
            ip_addresses=args.ip,
            days=args.days,
            ca_days=args.ca_days,
            cluster_domain=args.cluster_domain,
        )
    except ValueError as err:
        return _error("generate", str(err), 2)
    try:
        generated.write(out)
    except OSError as err:
        return _error("generate", f"cannot write {out}: {err.strerror or err}", 1)

    cert = generated.server_cert
    sans = ", ".join(certs.san_list(cert))
    print(
        f"wrote {out / certs.CA_CERT_FILE}, {out / certs.TLS_CERT_FILE} and "
        f"{out / certs.TLS_KEY_FILE} (mode 0600)\n"
        f"  CA:      {generated.ca_cert.subject.rfc4514_string()}, valid until "
        f"{generated.ca_cert.not_valid_after_utc:%Y-%m-%d}\n"
        f"  serving: valid until {cert.not_valid_after_utc:%Y-%m-%d}, SANs {sans}\n"
        "standard output: the caBundle for both webhook configurations; "
        f"next: meshgate certs secret {out} | kubectl apply -f -",
        file=sys.stderr,
    )
    print(generated.ca_bundle)
    return 0


def cmd_certs_check(args: argparse.Namespace) -> int:
    if (args.service is None) != (args.namespace is None):
        return _error("check", "give --service and --namespace together", 2)
    required: list[str] = []
    if args.service is not None:
        try:
            certs.validate_service_name(args.service)
            certs.validate_namespace_name(args.namespace)
        except ValueError as err:
            return _error("check", str(err), 2)
        required = certs.service_dns_names(args.service, args.namespace, args.cluster_domain)
    report = certs.check_cert_dir(Path(args.dir), min_days=args.min_days, required_names=required)
    print(report.render(), end="")
    return 0 if report.ok else 1


def cmd_certs_secret(args: argparse.Namespace) -> int:
    try:
        certs.validate_namespace_name(args.namespace)
    except ValueError as err:
        return _error("secret", str(err), 2)
    report = certs.check_cert_dir(Path(args.dir), min_days=0)
    if report.leaf is None or not report.key_ok:
        # Files missing, not PEM, or a key that is not the certificate's: a Secret that
        # would make every TLS handshake fail.
        for problem in report.problems:
            _error("secret", problem, 1)
        return 1
    for problem in report.problems:  # expired, chain: worth knowing, still renderable
        print(f"meshgate certs secret: warning: {problem}", file=sys.stderr)
    files = certs.read_cert_dir(Path(args.dir))
    manifest = certs.tls_secret(
        args.name, args.namespace, files, labels={"app.kubernetes.io/name": "meshgate"}
    )
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False, width=1 << 20))
    return 0


def add_certs_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``certs generate|check|secret`` on the ``meshgate`` subcommand parsers."""
    group = subparsers.add_parser(
        "certs",
        help="create, check and package the serving certificate",
        description="Create, check and package the webhook's serving certificate.",
    )
    sub = group.add_subparsers(dest="certs_command", required=True)

    gen = sub.add_parser(
        "generate",
        help="write a CA and a serving certificate; print the caBundle",
        description=(
            "Write ca.crt, tls.crt and tls.key (mode 0600) for the webhook's Service into "
            "--out, and print the base64 caBundle (and nothing else) on standard output. The "
            "SANs are SVC, SVC.NS, SVC.NS.svc and SVC.NS.svc.<cluster domain>, plus every "
            "--dns and --ip."
        ),
    )
    gen.add_argument(
        "--service", default=DEFAULT_SERVICE, help="Service name (default: %(default)s)"
    )
    gen.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="Service namespace (default: %(default)s)"
    )
    gen.add_argument("--out", required=True, help="directory for ca.crt, tls.crt and tls.key")
    gen.add_argument(
        "--ip", action="append", default=[], type=_ip, help="extra IP address SAN (repeatable)"
    )
    gen.add_argument(
        "--dns", action="append", default=[], type=_dns, help="extra DNS name SAN (repeatable)"
    )
    gen.add_argument(
        "--days",
        type=_positive_int,
        default=certs.SERVING_DAYS,
        help="serving certificate lifetime in days (default: %(default)s)",
    )
    gen.add_argument(
        "--ca-days",
        type=_positive_int,
        default=certs.CA_DAYS,
        help="CA lifetime in days (default: %(default)s)",
    )
    gen.add_argument(
        "--cluster-domain",
        default="cluster.local",
        help="cluster DNS domain (default: %(default)s)",
    )
    gen.add_argument(
        "--force", action="store_true", help="replace ca.crt, tls.crt and tls.key if present"
    )
    gen.set_defaults(func=cmd_certs_generate)

    check = sub.add_parser(
        "check",
        help="verify a certificate directory (exit 1 on any problem)",
        description=(
            "Report the chain, SANs and days to expiry of DIR's ca.crt and tls.crt and whether "
            "tls.key matches. Exit 1 when tls.crt does not verify against ca.crt, the key does "
            "not match, a certificate has expired or expires in under --min-days, or (with "
            "--service and --namespace) the SANs lack the Service's names."
        ),
    )
    check.add_argument("dir", help="directory with ca.crt, tls.crt and tls.key")
    check.add_argument(
        "--min-days",
        type=_non_negative,
        default=DEFAULT_MIN_DAYS,
        help="fail when a certificate expires in fewer days (default: %(default)s)",
    )
    check.add_argument("--service", help="require the SANs of this Service (with --namespace)")
    check.add_argument("--namespace", help="the Service's namespace (with --service)")
    check.add_argument(
        "--cluster-domain",
        default="cluster.local",
        help="cluster DNS domain (default: %(default)s)",
    )
    check.set_defaults(func=cmd_certs_check)

    secret = sub.add_parser(
        "secret",
        help="print the kubernetes.io/tls Secret manifest for a certificate directory",
        description=(
            "Print a kubernetes.io/tls Secret (YAML) with DIR's ca.crt, tls.crt and tls.key, "
            "e.g. meshgate certs secret DIR | kubectl apply -f -"
        ),
    )
    secret.add_argument("dir", help="directory with ca.crt, tls.crt and tls.key")
    secret.add_argument("--name", default=DEFAULT_SECRET, help="Secret name (default: %(default)s)")
    secret.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="Secret namespace (default: %(default)s)"
    )
    secret.set_defaults(func=cmd_certs_secret)
