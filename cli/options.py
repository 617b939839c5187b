"""Options that several commands take, declared once."""

from __future__ import annotations

ENGINE_HELP = ("Generation engine: auto (llama.cpp for GGUF models where installed, else "
               "transformers), transformers, or llama.cpp.")
MODEL_HELP = ("GGUF file or local Hugging Face model directory (default: the embedded "
              "SmolLM2-135M-Instruct).")
