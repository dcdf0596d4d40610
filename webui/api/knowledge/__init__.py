"""The knowledge-base endpoints under ``/v1/knowledge``."""
