"""Embedded EMQX-compatible stand-in broker: reads emqx/emqx.conf and behaves like EMQX where the fleet relies on it."""
