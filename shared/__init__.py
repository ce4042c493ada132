"""Contracts (event schemas) and plumbing shared by the services.

Nothing in here imports a service.
"""
