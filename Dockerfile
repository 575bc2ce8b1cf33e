# Warren, the AMQP 0-9-1 broker, as a container.
#
#   docker build -t warren .
#   docker run -d --name warren -p 5672:5672 -p 15672:15672 -p 15692:15692 \
#     -v warren-data:/var/lib/warren warren
#
# BASE_IMAGE is any Debian-style image with Python >= 3.11 whose `python` has venv (the official
# python:*-slim images; on machines without registry access, ../shared/docker/local-base.sh builds
# one: --build-arg BASE_IMAGE="$(../shared/docker/local-base.sh image)", and `docker build
# --network host` so that pip reaches PyPI and apt its mirror). The builder stage makes a venv in
# /opt/warren holding Warren's wheel and its dependencies, and compiles the hot modules there with
# mypyc (scripts/build_native.py); the final stage copies only that venv: no pip, no compiler.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS builder
WORKDIR /src
# A C compiler, and the Python headers where the base has none (Debian's python3 keeps them in
# python3-dev; the official images ship them). Versions are the base's own: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && if [ ! -f "$(python -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ]; then \
      apt-get install -y --no-install-recommends python3-dev; \
    fi \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/warren
# Dependencies first, read from pyproject.toml: this layer is reused until pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >requirements.txt \
 && /opt/warren/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt
COPY README.md ./
COPY broker/ broker/
RUN /opt/warren/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels . \
 && /opt/warren/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /wheels/*.whl \
 && /opt/warren/bin/pip uninstall --yes --quiet pip setuptools
# mypyc in a venv of its own, at the version pyproject.toml pins (the `native` extra), compiles
# /src/broker and copies the extensions into the installed package (python -P: found there, not in
# the current directory); the build fails if the compile does, so the image never ships slow.
COPY scripts/build_native.py scripts/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['native']))" >native.txt \
 && python -m venv /opt/mypyc \
 && /opt/mypyc/bin/pip install --no-cache-dir --disable-pip-version-check -r native.txt \
 && /opt/mypyc/bin/python scripts/build_native.py --force --python-executable /opt/warren/bin/python \
      --copy-to "$(/opt/warren/bin/python -P -c 'import broker.native; print(broker.native.PACKAGE_DIR)')" \
 && /opt/warren/bin/python -P -c 'import broker; assert broker.PURE_REASON is None, (broker.__file__, broker.PURE_REASON)'

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="Warren" \
      org.opencontainers.image.description="AMQP 0-9-1 message broker in Python that RabbitMQ clients use unchanged" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 warren \
 && useradd --no-log-init --uid 10001 --gid warren --home-dir /var/lib/warren \
            --no-create-home --shell /usr/sbin/nologin warren \
 && mkdir -p /var/lib/warren /etc/warren \
 && chown warren:warren /var/lib/warren
COPY --from=builder /opt/warren /opt/warren
# The default config: 0.0.0.0:5672, data in the volume, guest/guest from anywhere (change it!).
# Mount your own over it (-v ./broker.yaml:/etc/warren/broker.yaml:ro) or override single keys
# with WARREN_<SECTION>__<KEY> environment variables (WARREN_LOG_LEVEL=debug).
COPY deploy/warren-docker.yaml /etc/warren/broker.yaml
ENV PATH=/opt/warren/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WARREN_CONFIG=/etc/warren/broker.yaml
USER 10001:10001
WORKDIR /var/lib/warren
VOLUME ["/var/lib/warren"]
# 5672 AMQP, 5671 AMQPS (TLS), 15672 management API and web console, 15692 Prometheus /metrics
EXPOSE 5672 5671 15672 15692
# Healthy only when the AMQP listener answers a protocol header with a Connection.Start frame
# (type 1, channel 0, class 10 method 10). It reads WARREN_LISTENERS__AMQP__PORT if the port was moved.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, socket, sys; s = socket.create_connection(('127.0.0.1', int(os.environ.get('WARREN_LISTENERS__AMQP__PORT', '5672'))), timeout=4); s.sendall(b'AMQP\\x00\\x00\\x09\\x01'); r = s.makefile('rb').read(11); sys.exit(r[:3] != b'\\x01\\x00\\x00' or r[7:11] != b'\\x00\\x0a\\x00\\x0a')"]
# SIGTERM (docker stop) makes Warren close its clients with 320 CONNECTION_FORCED, fsync the log
# and exit 0; `warren` runs as PID 1 and installs its own handler.
STOPSIGNAL SIGTERM
CMD ["warren", "--config", "/etc/warren/broker.yaml"]
