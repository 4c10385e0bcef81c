"""``fleetctl``: the command line for developers and operators.

``fleetctl run`` starts the embedded stack (PostgreSQL, the EMQX-compatible broker, authsvc and api) in the
foreground; ``fleetctl db …`` bootstraps and migrates a database (embedded or external via DATABASE_URL).
It starts the services as separate processes and talks to them only over HTTP, MQTT and the database.
"""
