# vault-rotator: the daemon/CLI image. (No Docker engine runs on the project's CI machines,
# so this file is not built there; `make test` exercises the same package.)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vault_rotator ./vault_rotator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 rotator
COPY --from=build /install /usr/local
COPY config /etc/vault-rotator
USER rotator
ENV VAULT_ROTATOR_CONFIG=/etc/vault-rotator
ENTRYPOINT ["vault-rotator"]
CMD ["status"]
