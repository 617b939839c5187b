"""Dataset scans: every record of a corpus tested for a watermark, and the dataset as a whole.

A scan reads records (:mod:`distillmark.verify.sources`), tokenises their texts in large
batches (the spec's encoder, :func:`~distillmark.watermark.tokenizer.encoder_for`), and for
each key

* tests every record on its own (distinct tuples within the record, exact p-value), and marks
  the records flagged by Benjamini-Hochberg at a chosen false-discovery rate;
* pools the distinct tuples of *all* records
  (:class:`~distillmark.verify.aggregate.AggregateAccumulator`) for one exact dataset-level
  test: a tuple seen in two records is one draw of the key, counted once;
* counts the records' ``(scored, green)`` pairs for the estimate of the watermarked fraction
  (:mod:`distillmark.verify.fraction`).

Several keys: every p-value (record and dataset) is Bonferroni-corrected for their number.

One module per part:

- :mod:`.scoring`: the scoring core, :func:`score_tokens`, a pure function over token arrays;
- :mod:`.state`: its partial results per key (:class:`ScanState`), merged in input order;
- :mod:`.worker`: the configuration (:class:`ScanConfig`) and what a process builds from it;
- :mod:`.shards`: one shard scored chunk by chunk (:func:`process_shard`);
- :mod:`.result`: :class:`ScanResult` and :func:`finish`;
- :mod:`.output`: per-record result lines and the final per-record file;
- :mod:`.checkpoint`: the work folder and its atomic checkpoint;
- :mod:`.engine`: :func:`scan`, whose local engine streams shard after shard with bounded
  memory; :mod:`.dask_engine` runs :func:`process_shard` on a cluster and merges the results in
  shard order, so both give the same output, byte for byte;
- :mod:`.report`: the self-contained HTML report.
"""

from .engine import scan
from .result import DEFAULT_FDR, ScanResult, finish
from .scoring import RecordScores, score_tokens
from .shards import ScanProgress, ShardOutput, iter_shard_chunks, process_shard
from .state import KeyState, ScanState
from .worker import DEFAULT_BATCH_CHARS, ScanConfig

__all__ = [
    "DEFAULT_BATCH_CHARS",
    "DEFAULT_FDR",
    "KeyState",
    "RecordScores",
    "ScanConfig",
    "ScanProgress",
    "ScanResult",
    "ScanState",
    "ShardOutput",
    "finish",
    "iter_shard_chunks",
    "process_shard",
    "scan",
    "score_tokens",
]
