"""Scripted end-to-end scenarios run against a live stack (``fleet-sim scenario NAME``)."""
