"""MQTT 3.1.1 wire format for the stand-in broker (see ``codec``)."""
