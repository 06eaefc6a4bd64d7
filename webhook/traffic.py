"""The traffic annotations: validated as Istio validates them, and turned into istio-iptables flags.

The Istio CNI plugin reads these annotations on every pod it sets up and, when one does not
parse, logs the error, programs no redirection and still reports success: the pod runs with
its traffic outside the mesh. So an invalid value is refused at admission, naming the
annotation, in both modes and for already-injected pods in cni mode.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

PREFIX = "traffic.sidecar.istio.io/"
INCLUDE_IP_RANGES = PREFIX + "includeOutboundIPRanges"
EXCLUDE_IP_RANGES = PREFIX + "excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = PREFIX + "includeInboundPorts"
EXCLUDE_INBOUND_PORTS = PREFIX + "excludeInboundPorts"
INCLUDE_OUTBOUND_PORTS = PREFIX + "includeOutboundPorts"
EXCLUDE_OUTBOUND_PORTS = PREFIX + "excludeOutboundPorts"
EXCLUDE_INTERFACES = PREFIX + "excludeInterfaces"
KUBEVIRT_INTERFACES = PREFIX + "kubevirtInterfaces"
REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"
INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
INTERCEPTION_MODES = ("REDIRECT", "TPROXY", "NONE")

PROXY_UID = 1337
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
# Envoy's Prometheus port, the health port and the agent's status port: never redirected.
ALWAYS_EXCLUDED_INBOUND = "15090,15021,15020"

_DIGITS = re.compile(r"^[0-9]+$")
_BITS = re.compile(r"^(0|[1-9][0-9]*)$")
_INTERFACE = re.compile(r"^[^\s/,:]{1,15}$")


def _cidr_error(text: str) -> str | None:
    # Go's netip.ParsePrefix: address '/' decimal bits, no white space, host bits allowed.
    address, slash, bits = text.partition("/")
    if not slash or not _BITS.match(bits):
        return f"{text!r} is not a CIDR (address/bits)"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{text!r} is not a CIDR: bad address"
    if "%" in address or int(bits) > ip.max_prefixlen:
        return f"{text!r} is not a CIDR: bad prefix length"
    return None


def _cidr_list(value: str, *, wildcard: bool) -> str | None:
    if value == "" or (wildcard and value == "*"):
        return None
    for item in value.split(","):
        error = _cidr_error(item)
        if error:
            return error
    return None


def _port_list(value: str, *, wildcard: bool) -> str | None:
    if wildcard and value == "*":
        return None
    value = value.strip()
    if not value:
        return None
    for item in value.split(","):
        item = item.strip()
        if not _DIGITS.match(item) or not 1 <= int(item) <= 65535:
            return f"{item!r} is not a port number from 1 to 65535"
    return None


def _interfaces(value: str) -> str | None:
    if not value.strip():
        return None
    for item in value.split(","):
        if not _INTERFACE.match(item.strip()):
            return f"{item!r} is not a network interface name"
    return None


def _interception_mode(value: str) -> str | None:
    if value in INTERCEPTION_MODES:
        return None
    return f"{value!r} is not one of REDIRECT, TPROXY, NONE"


_CHECKS: dict[str, Callable[[str], str | None]] = {
    INCLUDE_IP_RANGES: lambda v: _cidr_list(v, wildcard=True),
    EXCLUDE_IP_RANGES: lambda v: _cidr_list(v, wildcard=False),
    INCLUDE_INBOUND_PORTS: lambda v: _port_list(v, wildcard=True),
    EXCLUDE_INBOUND_PORTS: lambda v: _port_list(v, wildcard=False),
    INCLUDE_OUTBOUND_PORTS: lambda v: _port_list(v, wildcard=True),
    EXCLUDE_OUTBOUND_PORTS: lambda v: _port_list(v, wildcard=False),
    EXCLUDE_INTERFACES: _interfaces,
    INTERCEPTION_MODE: _interception_mode,
}


def annotation_errors(annotations: Mapping[str, str]) -> list[str]:
    """One message per invalid traffic annotation, naming it and saying what is wrong."""
    errors = []
    for key, check in _CHECKS.items():
        value = annotations.get(key)
        if value is None:
            continue
        problem = check(value)
        if problem:
            errors.append(f"annotation {key}: {problem}")
    return errors


def interception_mode(annotations: Mapping[str, str]) -> str:
    return annotations.get(INTERCEPTION_MODE, "REDIRECT")


def iptables_args(annotations: Mapping[str, str]) -> list[str]:
    """The istio-iptables command line for istio-init, as Istio's injection template builds it."""
    excluded_inbound = ALWAYS_EXCLUDED_INBOUND
    extra = annotations.get(EXCLUDE_INBOUND_PORTS, "").strip()
    if extra:
        excluded_inbound += "," + extra
    args = [
        "istio-iptables",
        "-p", str(OUTBOUND_PORT),
        "-z", str(INBOUND_PORT),
        "-u", str(PROXY_UID),
        "-m", interception_mode(annotations),
        "-i", annotations.get(INCLUDE_IP_RANGES, "*"),
        "-x", annotations.get(EXCLUDE_IP_RANGES, ""),
        "-b", annotations.get(INCLUDE_INBOUND_PORTS, "*"),
        "-d", excluded_inbound,
    ]  # fmt: skip
    if INCLUDE_OUTBOUND_PORTS in annotations:
        args += ["-q", annotations[INCLUDE_OUTBOUND_PORTS]]
    if annotations.get(EXCLUDE_OUTBOUND_PORTS):
        args += ["-o", annotations[EXCLUDE_OUTBOUND_PORTS]]
    virtual = annotations.get(REROUTE_VIRTUAL_INTERFACES) or annotations.get(KUBEVIRT_INTERFACES)
    if virtual:
        args += ["-k", virtual]
    if annotations.get(EXCLUDE_INTERFACES):
        args += ["-c", annotations[EXCLUDE_INTERFACES]]
    args.append("--log_output_level=default:info")
    return args
