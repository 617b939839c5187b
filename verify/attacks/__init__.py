"""Attacks on a watermark, to measure its robustness: token edits, copy-paste dilution,
paraphrase by a local model, and watermark stealing (spoof and scrub without the key).

The attacker's randomness is plain seeded numpy (reproducible, never keyed); nothing here reads
a key. The evaluation with the key is the detector's, as for any text.
"""

from .corpus import encode_all, learn, read_texts, steal_text
from .edits import (
    EDITS,
    EditResult,
    candidate_vocab,
    delete,
    dilute,
    dilute_text,
    edit_ids,
    edit_text,
    insert,
    substitute,
)
from .paraphrase import INSTRUCTION, ParaphraseResult, chunk_text, paraphrase
from .steal import STEALS, StolenBias, StolenLists, rewrite_ids

__all__ = [
    "EDITS",
    "INSTRUCTION",
    "STEALS",
    "EditResult",
    "ParaphraseResult",
    "StolenBias",
    "StolenLists",
    "candidate_vocab",
    "chunk_text",
    "delete",
    "dilute",
    "dilute_text",
    "edit_ids",
    "edit_text",
    "encode_all",
    "insert",
    "learn",
    "paraphrase",
    "read_texts",
    "rewrite_ids",
    "steal_text",
    "substitute",
]
