# One image for the three Python services (order, goods, order_history).
# Every process is `python -m <service> <command>`:
#   python -m order api|relay|migrate
#   python -m goods api|relay|migrate
#   python -m order_history api|consumer|migrate
# docker-compose.yml sets the command and the environment of each container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a change of the source
# does not reinstall them: install the project once with empty packages, then
# drop it again and keep only its dependencies in this layer.
COPY pyproject.toml ./
RUN set -eux; \
    for pkg in shared order goods order_history devstack; do mkdir -p "$pkg"; touch "$pkg/__init__.py"; done; \
    pip install .; \
    pip uninstall -y order-history; \
    rm -rf shared order goods order_history devstack build ./*.egg-info

# The source. README.m[d] copies README.md when it exists and nothing otherwise.
COPY pyproject.toml README.m[d] ./
COPY shared/ ./shared/
COPY order/ ./order/
COPY goods/ ./goods/
COPY order_history/ ./order_history/
COPY migrations/ ./migrations/
COPY devstack/ ./devstack/
RUN set -eux; \
    pip install --no-deps .; \
    rm -rf build ./*.egg-info
# The processes run from /app (PYTHONPATH): shared/migrations.py finds the SQL
# files next to the packages, in /app/migrations.

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
USER app

EXPOSE 8080 8081 8082
CMD ["python", "-m", "order", "--help"]
