# The code location's image: the same image runs the code server (and the run workers it starts),
# the webserver and the daemon (docker-compose.yaml), and the user-code deployment and run pods on
# Kubernetes (deploy/helm/values.yaml). Build: docker build -t cdp-pipeline:<version> .
FROM python:3.11-slim

# gpg decrypts and encrypts deliveries (python-gnupg drives the gpg program).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gnupg \
 && rm -rf /var/lib/apt/lists/*

# Every package from the hash-locked tree (requirements.lock: the project with its deploy extra), then
# the project itself without resolving anything: a file whose hash differs fails the build, and
# nothing outside the lock gets in (docs/security.md, Supply chain). Tag images by version and
# promote the tested image, never rebuild it for production.
WORKDIR /opt/cdp_pipeline
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY cdp_pipeline ./cdp_pipeline
RUN pip install --no-cache-dir --no-deps .

# The instance settings (PostgreSQL, from DAGSTER_PG_* at run time) and the workspace that loads
# the code server over gRPC.
ENV DAGSTER_HOME=/opt/dagster/dagster_home \
    CDP_HOME=/var/lib/cdp \
    CDP_CONFIG_DIR=/etc/cdp
COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
COPY deploy/workspace.yaml /opt/dagster/workspace.yaml

# A user of its own: the store, the work folders and the GnuPG homes are private to it (0600/0700).
RUN useradd --system --uid 10001 --create-home cdp \
 && mkdir -p /var/lib/cdp /opt/dagster/dagster_home/storage \
 && chown -R cdp:cdp /var/lib/cdp /opt/dagster/dagster_home
USER cdp

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "cdp_pipeline.definitions", "--location-name", "cdp_pipeline"]
