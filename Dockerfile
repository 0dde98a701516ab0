# The takeback API and worker image (docker-compose.yml runs it twice, with different commands).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY domain ./domain
COPY store ./store
COPY service ./service
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY cli.py worker.py settings.py temporal_client.py demo.py ./
RUN pip install . && useradd --create-home --uid 10001 takeback && mkdir /outbox && chown takeback /outbox

USER takeback
EXPOSE 8000
ENTRYPOINT ["takeback"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
