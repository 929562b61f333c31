"""The hub's HTTP surface: REST API under ``/api/v1`` (OpenAPI at ``/docs``), ``/metrics``,
``/healthz`` and the server-rendered dashboard at ``/``. Build it with :func:`create_app`."""

from .app import create_app

__all__ = ["create_app"]
