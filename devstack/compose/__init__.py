"""`make compose-test`: docker-compose.yml run for real, on a Docker engine of its own.

`python -m devstack.compose test` installs what is missing (Debian's docker.io
and debootstrap; the compose v2 CLI built from the Go module proxy), starts a
`dockerd` with its own data root, exec root, PID file and socket, builds the
images the compose file names from package registries only (docker/standins/),
builds the project's image from the `Dockerfile`, then for the default stack and
for the cluster profile: `docker compose up --wait`, the black-box tests of
tests/blackbox/ against it, `docker compose down -v`. The `dockerd` is stopped
by its PID at the end, also on failure.

What is costly is kept between runs under COMPOSE_TEST_CACHE (default
/var/tmp/order-history-compose/): the debootstrap tarball, the compose binary,
the wheels and Kafka jars, and the engine's data root with its images. Each is
keyed by a hash of its inputs, so that a change rebuilds it.
"""
