"""Tests of the embedded EMQX-compatible broker (emqx.standin)."""
