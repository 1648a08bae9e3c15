"""The connector zoo: every bridge of SPEC section 2, selectable by exact name."""

from __future__ import annotations

from vlbridge.connectors import mlp  # noqa: F401  (registers mlp, linear)
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, LayerHook, build_connector

__all__ = ["CONNECTORS", "Connector", "ConnectorContext", "LayerHook", "available", "build_connector"]


def available() -> list[str]:
    """Registered connector names, exactly as in SPEC section 2."""
    return CONNECTORS.names()
