"""vram-gateway: config, workers, the OpenAI-compatible app and the CLI."""
