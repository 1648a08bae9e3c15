"""High resolution: AnyRes tiling (LLaVA-NeXT) between the connectors and the model."""
