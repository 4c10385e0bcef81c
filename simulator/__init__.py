"""fleet-sim: simulated vehicles for the fleet backend (paho-mqtt 2.x) — the reference MQTT client.

Modules, each with one job: ``vehicle`` (the MQTT protocol of one vehicle), ``controller`` (commands and
missions), ``motion`` (route following, battery), ``netloop`` (many clients on few threads), ``fleet`` (N
vehicles in one process), ``credentials_store`` (device secrets on disk), ``enrollment`` (tokens from a CSV or
the api), ``faults``, ``backoff``, ``outbox`` (offline buffer), ``display``, ``cli`` (the command line) with
``arguments`` (what its commands share), ``scenarios``.
"""
