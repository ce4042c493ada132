"""Local development stack: a real PostgreSQL and a real Apache Kafka, no Docker.

`make up`, `make down` and the test suite all go through this package, so the
stack the tests run against is started by exactly the code a developer uses.
It never imports a service: services are started as processes by command line.
"""
