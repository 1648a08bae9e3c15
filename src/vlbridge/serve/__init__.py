"""Serving: an OpenAI-compatible chat completions server with continuous batching, API keys, modality permissions,
request limits and a web chat page (`vlbridge serve`; FastAPI and uvicorn come with the `serve` extra)."""
