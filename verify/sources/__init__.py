"""Readers of the datasets a scan reads: records in, the texts to score and their location out.

Formats: JSON Lines (``.jsonl``/``.json``/``.ndjson``, optionally ``.gz`` or ``.zst``),
Parquet (read one row group at a time), CSV, plain-text files (one file is one record), and
datasets saved by Hugging Face ``datasets``' ``save_to_disk`` (a folder of Arrow stream files
listed in ``state.json``; a ``DatasetDict`` folder holds one such folder per split). A directory
is read recursively, its files in sorted order.

- :mod:`.plan`: the inputs cut into :class:`Shard` units (a file, or a line-aligned byte range
  of an uncompressed JSONL file, or a range of Parquet row groups);
- :mod:`.readers`: :func:`iter_shard`, a generator over one shard that yields ``(location,
  value)``, ``value`` the parsed record (a dict) or a :class:`BadRecord`. Memory is bounded by
  one line, one row group or one record batch, whatever the size of the file;
- :mod:`.records`: a record's texts, picked by :class:`Selector`: a dotted field path
  (``response``, ``output.text``, ``choices.0.message.content``), or a chat field (OpenAI-style
  ``messages``) whose ``assistant`` turns are scored, each after the turn before it as context
  (never scored).
"""

from .plan import FORMATS, Shard, plan_shards
from .readers import DEFAULT_MAX_RECORD_BYTES, iter_shard
from .records import BadRecord, Segment, Selector

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "FORMATS",
    "BadRecord",
    "Segment",
    "Selector",
    "Shard",
    "iter_shard",
    "plan_shards",
]
