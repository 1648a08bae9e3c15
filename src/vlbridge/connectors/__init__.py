"""The connector zoo: every bridge of SPEC section 2, selectable by exact name."""

from __future__ import annotations

from vlbridge.connectors import gated_xattn, mini, mlp, patch_merger, perceiver, pool, qformer, tome  # noqa: F401  (importing registers them)
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, LayerHook, build_connector

__all__ = ["CONNECTORS", "Connector", "ConnectorContext", "LayerHook", "available", "build_connector"]


SPEC_ORDER = ("mlp", "linear", "qformer", "perceiver", "gated_xattn", "pool", "tome", "patch_merger", "mini")


def available() -> list[str]:
    """Registered connector names, exactly as in SPEC section 2 and in its order (others after, by name)."""
    rank = {name: i for i, name in enumerate(SPEC_ORDER)}
    return sorted(CONNECTORS.names(), key=lambda name: (rank.get(name, len(rank)), name))
