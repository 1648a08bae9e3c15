"""Deployment: GGUF import (and, as it grows, quantisation, distillation and export)."""
