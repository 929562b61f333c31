"""edgefleet fleet simulator: thousands of devices in one process, the agent's real code.

Each simulated device has its own MQTT connection (its own client id and last will) to a real
broker, and runs the agent's pure parts: desired-document verification
(:func:`protocol.messages.verify_desired`), install planning (:func:`agent.install.plan`,
:func:`agent.install.choose_artifact`, :func:`agent.install.require_fresh_root`), chunk
subscription decisions (:func:`agent.download.chunk_subscription`), per-chunk hash checks
against the signed plan, archive and manifest verification (:func:`protocol.bundle.read_archive`),
A/B slot bookkeeping (:class:`agent.slots.SlotsState`, in memory), probation
(:func:`agent.install.probation_verdict`) and telemetry windows (:class:`protocol.sketch.LatencySketch`,
drift bins on the bundle's baseline edges). Inference is simulated (latency distributions,
injected errors, slowdowns, drift), and so are faults (offline periods, slow links, churn).

Like ``bench/`` and ``demo/``, it imports ``agent`` and ``protocol`` and nothing else of ours.
"""
