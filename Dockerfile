# memstream: one image for every role (`memstream run --roles apply|dispatch|worker`).
#
#   docker build -t memstream .
#   docker run --rm memstream run --roles apply      # with MEMSTREAM_* settings
#
# The tiktoken encodings are fetched and verified at build time (the image never downloads
# at run time); the process runs as an unprivileged user. Reviewed, not built, on the
# development machines (they have no Docker engine): see README, "Deployment".

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumers ./consumers
COPY memory_core ./memory_core
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEMSTREAM_ENCODINGS_DIR=/opt/memstream/tiktoken \
    MEMSTREAM_CACHE_DIR=/tmp/memstream-cache \
    MEMSTREAM_MEMORIES_FILE=/etc/memstream/memories.yaml \
    MEMSTREAM_HEALTH_HOST=0.0.0.0 \
    MEMSTREAM_HEALTH_PORT=8080
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && memstream encodings install /opt/memstream/tiktoken \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin memstream
COPY memories.yaml /etc/memstream/memories.yaml
USER 10001
EXPOSE 8080
ENTRYPOINT ["memstream"]
CMD ["run", "--roles", "apply"]
