"""EMQX configuration for the fleet backend and an embedded EMQX-compatible stand-in broker (emqx.standin)."""
