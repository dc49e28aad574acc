"""Model zoo: architecture cards of real small language models and synthetic-weight GGUF files."""
