"""High resolution: AnyRes tiling (LLaVA-NeXT) and LLaVA-Mini HD crops, between the connectors and the model."""
