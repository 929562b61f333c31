"""edgefleet wire protocol v1: pure, no I/O.

Everything that crosses a process boundary between hub, agent, compiler and cloud is defined
here once: MQTT topics, message schemas, the bundle manifest and its signatures, the trust root,
and the mergeable sketches (latency, drift bins) with their comparison math.

Only dependency: pyca/cryptography (Ed25519; a device only verifies, which goes through the
OpenSSL Python already loads when it can: protocol/ed25519.py). No numpy, so it runs on any
device Python.
"""

PROTOCOL_VERSION = 1
