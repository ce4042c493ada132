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

# Wheels for a build without PyPI: when .devstack/wheels/ holds them (`make
# compose-test` puts the dependencies' wheels there), pip installs from them
# alone (--no-index); otherwise from PyPI. (pyproject.toml: a file that always
# exists, so that the COPY has a source when the wheels do not.)
COPY pyproject.toml .devstack/wheel[s] /tmp/wheels/

# Dependencies first, from pyproject.toml alone, so that a change of the source
# does not reinstall them: install the project once with empty packages (every
# package pyproject.toml names), then drop it again and keep only its
# dependencies in this layer.
COPY pyproject.toml ./
RUN set -eux; \
    if ls /tmp/wheels/*.whl > /dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheels; fi; \
    python -c 'import pathlib, tomllib; \
        found = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["packages"]["find"]; \
        packages = [name for name in found["include"] if "*" not in name]; \
        [pathlib.Path(*name.split("."), "__init__.py").parent.mkdir(parents=True, exist_ok=True) for name in packages]; \
        [pathlib.Path(*name.split("."), "__init__.py").touch() for name in packages]'; \
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
    if ls /tmp/wheels/*.whl > /dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheels; fi; \
    pip install --no-deps .; \
    rm -rf build ./*.egg-info
# The processes run from /app (PYTHONPATH): shared/migrations.py finds the SQL
# files next to the packages, in /app/migrations.

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
USER app

EXPOSE 8080 8081 8082
CMD ["python", "-m", "order", "--help"]
