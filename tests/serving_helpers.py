"""Helpers shared by the serve and probe tests: a tiny random-init model over the real SmolLM2
tokenizer, served on loopback by the real server in a background thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distillmark.watermark import hf
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.serve import Accounts, ServeConfig, create_app, start_server
from distillmark.watermark.tokenizer import builtin_tokenizer_path

VOCAB = 49152
IM_END = "<|im_end|>"
MODEL_NAME = "tiny-smollm2"


def tiny_generator(seed: int = 1234) -> hf.LoadedModel:
    """A random-init 2-layer Llama over the SmolLM2 vocabulary, with the real tokenizer.

    Its next-token distributions are close to uniform over 49,152 tokens (entropy near 15.6
    bits), so a watermark shows in few tokens and answers rarely repeat a tuple.
    """
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()),
                                  eos_token=IM_END, pad_token=IM_END, padding_side="left")
    return hf.LoadedModel(model=model, tokenizer=tok, source="tiny")


@contextmanager
def serving(generator: Any, *, spec: WatermarkSpec | None = None,
            accounts: dict[str, str] | None = None, **config: Any) -> Iterator[str]:
    """Serve ``generator`` on a free loopback port; yields the base URL (``…/v1``)."""
    cfg = ServeConfig(model_name=MODEL_NAME, spec=spec,
                      accounts=Accounts.from_mapping(accounts) if accounts else None, **config)
    server = start_server(create_app(generator, cfg))
    try:
        yield server.url
    finally:
        server.stop()
