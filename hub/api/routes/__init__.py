"""The API's routes, one module-level router per resource family (``hub.api.app`` includes them)."""
