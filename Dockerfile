# oomguard node agent image. Build from the repository root:
#   docker build -t oomguard:0.1.0 .
# The chart runs it as `oomguard run` with the privileges the DaemonSet mode needs (see
# charts/oomguard/values.yaml); on its own the image runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: install the package and its dependencies into a virtual environment --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/oomguard
ENV PATH=/opt/oomguard/bin:$PATH
WORKDIR /src
# Only what the package build reads (see .dockerignore): a change to tests or docs never
# invalidates the install layer.
COPY pyproject.toml README.md ./
COPY oomguard ./oomguard
# The install .ci/run exercises (there editable, with the test extras); pip compiles the
# bytecode here, so the read-only root filesystem is never written at run time.
# A builder behind a TLS-intercepting proxy or with a private index lends pip its
# configuration as the build secret `pip.conf` (and the CA bundle that names, as
# `pip-ca.crt`): `--secret id=pip.conf,src=FILE`. Secrets are mounted for this step
# only and are in no layer; without them pip uses its defaults.
# Then what the agent never runs goes: pip and setuptools (nothing is installed at run
# time) and the Kubernetes client's asyncio twin, kubernetes.aio (68 MB; oomguard uses
# the sync client, and nothing outside kubernetes/aio imports it).
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca.crt \
    PIP_CONFIG_FILE=/run/secrets/pip.conf python3 -m pip install --no-cache-dir . \
 && python3 -m pip uninstall --yes --quiet pip setuptools \
 && rm -r /opt/oomguard/lib/python3*/site-packages/kubernetes/aio

# -- runtime: the slim base plus the virtual environment, nothing else ----------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="oomguard" \
      org.opencontainers.image.description="Makes the Linux OOM killer visible and steerable on Kubernetes nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/oomguard /opt/oomguard
ENV PATH=/opt/oomguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# An unprivileged user by default; the DaemonSet sets runAsUser 0 because adjusting
# every container's /proc/PID/oom_score_adj and reading the host's state need root.
RUN useradd --system --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin oomguard
USER 65532:65532
ENTRYPOINT ["oomguard"]
CMD ["run"]
