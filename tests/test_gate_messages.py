"""Tests for the gate's words: deny_message and the ≤ 120-character warnings."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.gate import CapabilitySet, Violation, deny_message, spec_violations

GATED = CapabilitySet.of(["NET_ADMIN", "NET_RAW"])


def container(name: str, **context: Any) -> dict[str, Any]:
    return {"name": name, "image": "example/app:1", "securityContext": context}


def adds(*caps: str) -> dict[str, Any]:
    return {"capabilities": {"add": list(caps)}}


def violations_of(**lists: list[dict[str, Any]]) -> list[Violation]:
    return spec_violations(lists, GATED)


def test_deny_message_names_namespace_every_container_kind_and_capability() -> None:
    found = violations_of(
        containers=[container("app"), container("web", **adds("NET_ADMIN"))],
        initContainers=[container("setup", **adds("cap_net_raw"))],
        ephemeralContainers=[container("debugger", privileged=True)],
    )
    assert len(found) == 3
    message = deny_message("payments", found, unknown_namespace=False)
    assert '"payments"' in message
    assert 'container "web"' in message and "NET_ADMIN" in message
    assert 'initContainer "setup"' in message and "NET_RAW" in message
    assert "cap_net_raw" in message  # the spelling the author wrote, so it can be found
    assert 'ephemeralContainer "debugger"' in message and "privileged" in message
    assert '"app"' not in message
    # how to fix it
    assert "fix" in message.lower()
    assert "capabilities.add" in message
    assert "privileged" in message.split("fix", 1)[1]
    assert "could not be read" not in message


def test_deny_message_lists_every_violation_of_one_container() -> None:
    found = violations_of(containers=[container("app", privileged=True, **adds("all", "NET_RAW"))])
    message = deny_message("ns", found, unknown_namespace=False)
    for word in ("privileged", "ALL", "NET_RAW"):
        assert word in message
    assert message.count('container "app"') == 3


def test_deny_message_for_unknown_namespace_says_retry() -> None:
    found = violations_of(containers=[container("app", **adds("NET_ADMIN"))])
    message = deny_message("fresh", found, unknown_namespace=True)
    assert '"fresh"' in message
    assert "could not be read" in message
    assert "retried" in message
    assert 'container "app"' in message and "NET_ADMIN" in message


def test_deny_message_pod_level_violation_gives_its_own_fix() -> None:
    v = Violation("pod", "sidecar.istio.io/interceptionMode",
                  "sets sidecar.istio.io/interceptionMode: NONE", "set it to REDIRECT")  # fmt: skip
    message = deny_message("ns", [v], unknown_namespace=False)
    assert "interceptionMode: NONE" in message
    assert "set it to REDIRECT" in message


@pytest.mark.parametrize(
    "v",
    [
        pytest.param(Violation("container", "app", "adds NET_ADMIN"), id="short"),
        pytest.param(Violation("ephemeralContainer", "debugger-" + "x" * 200, "adds NET_ADMIN"),
                     id="long-name"),
        pytest.param(Violation("initContainer", "i" * 300,
                               "adds NET_ADMIN (as 'cap_net_admin')"), id="long-name-and-what"),
        pytest.param(Violation("container", "app", "is privileged " + "y" * 300), id="long-what"),
        pytest.param(Violation("pod", "", "is not enrolled " + "z" * 200), id="pod-level"),
    ],
)  # fmt: skip
def test_short_is_at_most_120_characters(v: Violation) -> None:
    text = v.short()
    assert len(text) <= 120
    if len(v.describe()) <= 120:
        assert text == v.describe()
    else:
        assert "…" in text


def test_short_shortens_the_name_and_keeps_the_capability() -> None:
    name = "a-very-long-container-name-" * 10
    v = Violation("ephemeralContainer", name, "adds NET_ADMIN")
    text = v.short()
    assert len(text) <= 120
    assert text.startswith('ephemeralContainer "a-very-long')
    assert "…" in text
    assert text.endswith('" adds NET_ADMIN')
    assert name not in text


def test_short_with_custom_limit() -> None:
    v = Violation("container", "n" * 50, "adds NET_ADMIN")
    assert len(v.short(limit=40)) <= 40
    assert "…" in v.short(limit=40)


def test_warning_per_violation_fits() -> None:
    found = violations_of(
        containers=[container("c" * 250, **adds("NET_ADMIN", "net_raw"), privileged=True)],
        ephemeralContainers=[container("e" * 90, **adds("Cap_Net_Admin"))],
    )
    assert len(found) == 4
    for v in found:
        assert len(v.short()) <= 120
        assert v.kind in v.short()
