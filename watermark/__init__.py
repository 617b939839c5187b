"""Watermark embedding: keys and specs, the keyed PRF, schemes, and serving-stack adapters.

Heavy stacks (torch, transformers) are imported only by the adapter modules
(:mod:`distillmark.watermark.hf`), never here.
"""

from .errors import (
                     DistillmarkError,
                     InputError,
                     MissingDependencyError,
                     ModelNotFoundError,
                     ParameterError,
                     SpecError,
                     TokenizerMismatchError,
)
from .greenlist import GreenList, GreenListParams
from .keys import WatermarkSpec, derive_account_spec, load_spec, new_spec, save_spec
from .registry import PRESETS, SCHEMES, scheme_for
from .tokenizer import BUILTIN_SMOLLM2, TokenizerInfo, load_tokenizer

__all__ = [
                     "BUILTIN_SMOLLM2",
                     "PRESETS",
                     "SCHEMES",
                     "DistillmarkError",
                     "GreenList",
                     "GreenListParams",
                     "InputError",
                     "MissingDependencyError",
                     "ModelNotFoundError",
                     "ParameterError",
                     "SpecError",
                     "TokenizerInfo",
                     "TokenizerMismatchError",
                     "WatermarkSpec",
                     "derive_account_spec",
                     "load_spec",
                     "load_tokenizer",
                     "new_spec",
                     "save_spec",
                     "scheme_for",
]
