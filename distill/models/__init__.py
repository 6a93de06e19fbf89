"""Model helpers that need no hub: tiny Qwen2 models and byte-level BPE tokenizers built offline."""
