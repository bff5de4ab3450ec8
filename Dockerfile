# vault-rotator: the daemon/CLI image. No Docker engine runs on the project's CI machines, so
# this file is not built there; tests/test_deploy.py builds the same wheel, installs it in a
# fresh venv and runs it, and checks this file's user, ports and paths against deploy/.
#
# The base image is pinned by exact version tag (the CI machines cannot pull to read a digest).
# For production, pin it by digest as well:  --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:…
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY vault_rotator ./vault_rotator
# The wheel tests/test_deploy.py builds, then a venv holding it and its dependencies.
RUN python -m pip wheel --no-cache-dir --no-deps . -w /wheels \
 && python -m venv /opt/vault-rotator \
 && /opt/vault-rotator/bin/pip install --no-cache-dir /wheels/*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="vault-rotator" \
      org.opencontainers.image.description="Zero-downtime rotation of ARouter API keys kept in Vault/OpenBao" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric user and group: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 rotator \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rotator \
 && mkdir -p /etc/vault-rotator
COPY --from=build /opt/vault-rotator /opt/vault-rotator
# No policy files are baked in: mount a directory of them at /etc/vault-rotator (a ConfigMap in
# Kubernetes, a bind mount in compose). Control API on 9780, probes and /metrics on 9781: these
# collide with neither Prometheus (9090) nor Vault (8200).
ENV PATH=/opt/vault-rotator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VAULT_ROTATOR_CONFIG=/etc/vault-rotator \
    VAULT_ROTATOR_LISTEN=0.0.0.0:9780 \
    VAULT_ROTATOR_METRICS_LISTEN=0.0.0.0:9781
USER 10001:10001
WORKDIR /tmp
EXPOSE 9780 9781
# The slim image has no curl: Python asks the metrics listener's /healthz (urlopen raises on
# anything but a 2xx, so the exit code is the answer).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9781/healthz', timeout=4)"]
ENTRYPOINT ["vault-rotator"]
CMD ["run"]
