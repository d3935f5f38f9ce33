"""Traffic against a running ``shipyard serve``: the drift simulator and the load test.

* :mod:`~shipyard.loadtest.traffic` — the served model (probed over HTTP), the snapshot
  rows that fit it, shifted by a monitor scenario, and the request bodies built from them.
* :mod:`~shipyard.loadtest.simulate` — ``shipyard simulate``: N predictions with feedback,
  so the monitor has something to react to.
* :mod:`~shipyard.loadtest.locustfile` — Locust users for every prediction route and
  ``/feedback``; usable with ``locust -f`` directly.
* :mod:`~shipyard.loadtest.run` — ``shipyard loadtest``: Locust headless, bounded, with the
  server's resident memory sampled (:mod:`~shipyard.loadtest.memory`).
* :mod:`~shipyard.loadtest.sustained` — saturation ramp, then a paced run at a share of it.

Nothing here imports torch; numpy, httpx and Locust load only inside the commands.
"""
