"""Watermark embedding: keys and specs, the keyed PRF, schemes, and serving-stack adapters.

Heavy stacks are imported only by the modules that need them, never here: torch and
transformers by the transformers adapter (:mod:`distillmark.watermark.hf`, with its processor and
sampler modules), llama-cpp-python by :mod:`distillmark.watermark.llamacpp`, and torch, on first
use, by the schemes that reproduce transformers' own watermarks.
"""

from .dipmark import DiPmark, DiPmarkParams
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
from .gumbel import Gumbel, GumbelParams
from .keys import WatermarkSpec, load_spec, new_spec, save_spec
from .registry import PRESETS, SCHEMES, scheme_for
from .tokenizer import BUILTIN_SMOLLM2, TokenizerInfo, load_tokenizer
from .tournament import Tournament, TournamentParams
from .transformers_kgw import TransformersKGW, TransformersKGWParams
from .transformers_synthid import TransformersSynthID, TransformersSynthIDParams

__all__ = [
                     "BUILTIN_SMOLLM2",
                     "PRESETS",
                     "SCHEMES",
                     "DiPmark",
                     "DiPmarkParams",
                     "DistillmarkError",
                     "GreenList",
                     "GreenListParams",
                     "Gumbel",
                     "GumbelParams",
                     "InputError",
                     "MissingDependencyError",
                     "ModelNotFoundError",
                     "ParameterError",
                     "SpecError",
                     "TokenizerInfo",
                     "TokenizerMismatchError",
                     "Tournament",
                     "TournamentParams",
                     "TransformersKGW",
                     "TransformersKGWParams",
                     "TransformersSynthID",
                     "TransformersSynthIDParams",
                     "WatermarkSpec",
                     "load_spec",
                     "load_tokenizer",
                     "new_spec",
                     "save_spec",
                     "scheme_for",
]
