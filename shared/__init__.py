"""Code both sides use: envelopes, keys, the trust store, transport, errors, config."""

from __future__ import annotations

__all__: list[str] = []
