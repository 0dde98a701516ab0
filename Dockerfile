# The takeback API and worker image (docker-compose.yml runs it twice, with different commands).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY domain ./domain
COPY store ./store
COPY service ./service
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY observability ./observability
COPY cli.py worker.py settings.py temporal_client.py codec.py demo.py ./
# `pip install .` installs the package (with its migrations) and the `takeback` console script.
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 takeback \
    && mkdir -p /data/outbox && chown -R takeback /data
ENV TAKEBACK_DATA_DIR=/data

USER takeback
EXPOSE 8000
ENTRYPOINT ["takeback"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
