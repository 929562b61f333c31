"""edgefleet device agent: verify, fetch, stage, self-test, switch, serve, report.

Runs on a Raspberry Pi / Coral device with only paho-mqtt, numpy, ai-edge-litert, pillow and
cryptography (``edgefleet[agent]``). Never imports tensorflow, fastapi or sqlmodel, and never
imports another edgefleet component except :mod:`protocol`.
"""

AGENT_VERSION = "0.1.0"
