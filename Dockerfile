# The engine and tools, for docker-compose.yml (a user's machine with Docker).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kbank ./kbank
RUN pip install --no-cache-dir .
ENV BANK_STATE_DIR=/state
ENTRYPOINT ["bank"]
