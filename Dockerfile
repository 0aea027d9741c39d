# syntax=docker/dockerfile:1
# Build: the same install steps as the README (`python dev.py install`), from the lock file.
FROM python:3.11-slim AS build
WORKDIR /app
COPY pyproject.toml requirements.lock requirements-dev.lock dev.py README.md ./
COPY app ./app
COPY migrations ./migrations
RUN python dev.py install --prod --venv /opt/venv

# Run: the virtual environment and the migrations, as a user without privileges.
FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 atelier
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app/migrations /app/migrations
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ENV=production \
    LOG_JSON=true \
    DATA_DIR=/home/atelier/data
USER atelier
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["atelier", "serve", "--host", "0.0.0.0", "--port", "8000"]
