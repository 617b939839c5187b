"""What every worker of a scan needs: the configuration (keys, what to score, limits) and,
built from it once per process, the tokenizer, the schemes and the record selector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import scheme_for
from distillmark.watermark.tokenizer import encoder_for

from ..attribute import Attributor
from ..candidates import Candidates
from ..decision import DEFAULT_ALPHA
from ..detect import CHUNK_CHARS, text_chunks
from ..sources import DEFAULT_MAX_RECORD_BYTES, Selector

__all__ = ["DEFAULT_BATCH_CHARS", "ScanConfig", "Worker"]

#: Text (characters) per tokenizer batch: large enough for the tokenizer's threads, small
#: enough that a batch's arrays stay a few MB.
DEFAULT_BATCH_CHARS = 2 << 20


@dataclass(frozen=True)
class ScanConfig:
    """What every worker needs to score a shard (picklable; holds the keys' secrets: send it
    only to machines you trust with them).

    Attributes:
        specs: the keys.
        field, chat: what to score (:class:`~.sources.Selector`).
        max_record_bytes: longer records are bad records.
        skip_bad: go on past bad records (else the first one stops the scan).
        tokenizer: tokenizer path replacing the keys' recorded one (must match it).
        batch_chars: text per tokenizer batch.
        rows: produce per-record result lines (off when no per-record file is wanted).
        accounts: candidate accounts: each record is also attributed with the first key's
            account layer (:mod:`~distillmark.verify.attribute`), named at ``alpha``.
    """

    specs: tuple[WatermarkSpec, ...]
    field: str | None = None
    chat: str | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    skip_bad: bool = False
    tokenizer: str | None = None
    batch_chars: int = DEFAULT_BATCH_CHARS
    rows: bool = True
    accounts: Candidates | None = None
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        if not self.specs:
            raise ParameterError("a scan needs at least one key")
        ids = [s.key_id for s in self.specs]
        if len(set(ids)) != len(ids):
            dup = next(k for k in ids if ids.count(k) > 1)
            raise ParameterError(f"key {dup} is given twice")
        if len({s.tokenizer.sha256 for s in self.specs}) > 1:
            raise InputError("the keys are bound to different tokenizers; scan them separately")
        if self.max_record_bytes < 1:
            raise ParameterError(f"`max_record_bytes` must be >= 1, got {self.max_record_bytes}")
        if self.batch_chars < 1:
            raise ParameterError(f"`batch_chars` must be >= 1, got {self.batch_chars}")
        Selector(self.field, self.chat)  # validates the paths

    def fingerprint(self) -> dict[str, Any]:
        """What the results depend on (no secret): for checkpoints."""
        return {"keys": [s.key_id for s in self.specs], "field": self.field, "chat": self.chat,
                "max_record_bytes": self.max_record_bytes, "skip_bad": self.skip_bad,
                "tokenizer": self.specs[0].tokenizer.sha256, "rows": self.rows,
                "accounts": None if self.accounts is None else self.accounts.fingerprint(),
                "alpha": self.alpha}


class Worker:
    """Tokenizer, schemes and selector of a config, built once per process."""

    _cache: ClassVar[dict[tuple[Any, ...], Worker]] = {}

    def __init__(self, config: ScanConfig) -> None:
        self.config = config
        self.selector = Selector(config.field, config.chat)
        self.encoder = encoder_for(config.specs[0].tokenizer, config.tokenizer)
        self.schemes = [scheme_for(s) for s in config.specs]
        self.attributor = (Attributor(config.specs[0], config.accounts,
                                      tokenizer=config.tokenizer)
                           if config.accounts is not None else None)
        self.columns: list[str] = list(dict.fromkeys([self.selector.parts[0],
                                                      str(self.selector.path)]))

    @classmethod
    def of(cls, config: ScanConfig) -> Worker:
        key = (tuple((s.key_id, s.scheme, json.dumps(dict(s.params), sort_keys=True,
                                                     default=str)) for s in config.specs),
               config.field, config.chat, config.tokenizer, id(config.accounts))
        w = cls._cache.get(key)
        if w is None:
            w = cls(config)
            cls._cache.clear()
            cls._cache[key] = w
        elif w.config != config:
            w.config = config
        return w

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``texts`` end to end and each text's length (long texts in line-
        aligned pieces, as :meth:`~.detect.Detector.encode`)."""
        pieces: list[str] = []
        owner: list[int] | None = None
        if any(len(t) > CHUNK_CHARS for t in texts):
            owner = []
            for i, t in enumerate(texts):
                parts = text_chunks(t) if len(t) > CHUNK_CHARS else [t]
                pieces.extend(parts)
                owner.extend([i] * len(parts))
        else:
            pieces = texts
        ids, plens = self.encoder.encode_batch(pieces)
        if owner is None:
            return ids, plens
        return ids, np.bincount(np.asarray(owner, dtype=np.int64), weights=plens,
                                minlength=len(texts)).astype(np.int64)
