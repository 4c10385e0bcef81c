# One image for authsvc, api, the api's worker and the one-shot migrations job (the command differs per service).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fleet
WORKDIR /app

COPY pyproject.toml constraints.txt README.md ./
COPY fleetcore ./fleetcore
COPY fleetctl ./fleetctl
COPY authsvc ./authsvc
COPY api ./api
COPY emqx ./emqx
COPY simulator ./simulator
COPY sql ./sql
# Editable install: the code runs from /app, so sql/ and emqx/ are found next to it. No embedded PostgreSQL here.
RUN pip install -c constraints.txt -e . && python -m compileall -q fleetcore fleetctl authsvc api

# GET / reports the commit the image was built from:
#   docker compose build --build-arg FLEET_GIT_COMMIT=$(git rev-parse HEAD)
ARG FLEET_GIT_COMMIT=unknown
ENV FLEET_GIT_COMMIT=${FLEET_GIT_COMMIT}

USER fleet
EXPOSE 8080 8081
CMD ["python", "-m", "api.server"]
