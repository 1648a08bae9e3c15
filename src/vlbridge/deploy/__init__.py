"""Deployment: turning a trained model into what other engines and smaller machines run (export to HF layouts, GGUF
import)."""
