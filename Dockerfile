# syntax=docker/dockerfile:1
#
# meshgate, the admission webhook: docker build -t meshgate:0.1.0 .
#
# Two stages. The builder turns the source into a virtual environment at /opt/meshgate with
# docker/build.sh (wheel built, installed with the exact pins of constraints.txt, binary
# wheels only); tests/test_dockerfile.py runs the same script, so the test checks what the
# image ships. The final stage is the same slim Python base with that environment copied in,
# pip removed, and an unprivileged numeric user: no compiler, no package tooling, no source.
#
# For reproducible builds pin the base by digest as well, e.g.
# python:3.11-slim-bookworm@sha256:<digest>, and let a bot (Renovate, Dependabot) bump it.

FROM python:3.11-slim-bookworm AS builder

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY webhook/ webhook/
COPY docker/build.sh docker/build.sh
# pip's cache lives in a BuildKit cache mount: faster rebuilds, nothing left in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    sh docker/build.sh /src /opt/meshgate


FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="meshgate" \
      org.opencontainers.image.description="Kubernetes admission webhook that enrols pods in a service mesh and gates NET_ADMIN" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# Nothing but the runtime: the base image's pip, setuptools and wheel go; the webhook's
# environment has no pip either. The account has no home directory and no login shell;
# Kubernetes refers to it by number (runAsUser: 65532, runAsNonRoot: true).
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 65532 meshgate \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin meshgate

# Owned by root and not writable by the webhook's user; bytecode is compiled at install
# time, so the root filesystem can be mounted read-only.
COPY --from=builder /opt/meshgate /opt/meshgate

ENV PATH="/opt/meshgate/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 65532:65532
# HTTPS: /mutate, /validate, /healthz, /readyz, /metrics. The serving certificate is
# mounted at /etc/meshgate/tls (the meshgate-tls Secret), the default --cert-dir.
EXPOSE 8443
ENTRYPOINT ["/opt/meshgate/bin/meshgate"]
CMD ["serve"]
