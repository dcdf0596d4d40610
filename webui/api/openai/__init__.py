"""The OpenAI protocol: ``/v1/models`` and ``/v1/chat/completions``."""
