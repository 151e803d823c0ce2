"""Serving: ONNX Runtime micro-batching, hot swap, HTTP routes."""
