"""edgefleet hub: registry, signing authority, rollout engine, MQTT bridge, REST API.

Layout: ``config`` (the one typed config), ``keys`` (trust root + online key), ``store``
(content-addressed bundle files), ``models``/``db`` (SQLModel tables), ``ingest`` (MQTT
messages -> rows), ``rollouts`` (the shell around the pure ``rollout`` state machine),
``mqtt`` (paho bridge), ``api`` (FastAPI), ``metrics`` (every Prometheus metric).
"""
