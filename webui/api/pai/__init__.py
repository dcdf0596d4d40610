"""The PAI-EAS ChatLLM protocol: ``POST /`` and the WebSocket at ``/``."""
