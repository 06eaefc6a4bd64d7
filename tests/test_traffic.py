"""istio-iptables arguments built from the traffic annotations (SPEC 2, init mode)."""

from __future__ import annotations

import pytest

from webhook import traffic

P = "traffic.sidecar.istio.io/"


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_defaults_match_istios_legacy_init_container() -> None:
    # The arguments of istio-init in Istio's hello.yaml.injected reference output.
    assert traffic.iptables_args({}) == [
        "istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
        "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
        "--log_output_level=default:info",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("annotations", "name", "value"),
    [
        pytest.param({P + "includeOutboundIPRanges": "10.0.0.0/8"}, "-i", "10.0.0.0/8", id="-i"),
        pytest.param({P + "excludeOutboundIPRanges": "10.1.0.0/16"}, "-x", "10.1.0.0/16", id="-x"),
        pytest.param({P + "includeInboundPorts": "80,443"}, "-b", "80,443", id="-b"),
        pytest.param(
            {P + "excludeInboundPorts": "9000"},
            "-d",
            "15090,15021,15020,9000",
            id="-d-keeps-the-proxy-ports",
        ),  # fmt: skip
        pytest.param({P + "includeOutboundPorts": "5432"}, "-q", "5432", id="-q"),
        pytest.param({P + "excludeOutboundPorts": "25"}, "-o", "25", id="-o"),
        pytest.param({P + "excludeInterfaces": "eth1"}, "-c", "eth1", id="-c"),
        pytest.param({P + "kubevirtInterfaces": "net1,net2"}, "-k", "net1,net2", id="-k-kubevirt"),
        pytest.param(
            {"istio.io/reroute-virtual-interfaces": "net1"}, "-k", "net1", id="-k-reroute"
        ),  # fmt: skip
        pytest.param({"sidecar.istio.io/interceptionMode": "TPROXY"}, "-m", "TPROXY", id="-m"),
    ],
)
def test_each_annotation_sets_its_flag(annotations: dict[str, str], name: str, value: str) -> None:
    args = traffic.iptables_args(annotations)
    assert flag(args, name) == value
    assert args[0] == "istio-iptables" and args[-1] == "--log_output_level=default:info"


@pytest.mark.parametrize("name", ["-q", "-o", "-c", "-k"])
def test_optional_flags_absent_without_their_annotation(name: str) -> None:
    assert name not in traffic.iptables_args({})
