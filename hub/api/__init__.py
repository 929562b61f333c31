"""The hub's HTTP surface: REST API under ``/api/v1`` (OpenAPI at ``/docs``), ``/metrics``,
``/healthz``, ``/readyz``. Build it with :func:`create_app`; the dashboard (``hub.web``) is added beside
it by :func:`hub.server.build`."""

from .app import create_app

__all__ = ["create_app"]
