"""Every verifier gives the statistics and p-values recorded in tests/vectors/scoring.json,
bit for bit: detect (one text and a batch), the pooled test, scan (per record and dataset),
probe's answer scoring and the open-model audit, for every scheme."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).parent / "vectors" / "record_scoring.py"
_spec = importlib.util.spec_from_file_location("record_scoring", _PATH)
assert _spec is not None and _spec.loader is not None
record_scoring = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_scoring)

RECORDED = json.loads((_PATH.parent / "scoring.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("label,name,params", record_scoring.CASES,
                         ids=[c[0] for c in record_scoring.CASES])
def test_same_bits_as_recorded(label, name, params, tmp_path):
    from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer

    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    got = record_scoring.record_case(label, name, params, tok, info, tmp_path)
    want = RECORDED[label]
    diffs = record_scoring.differences(want, got)
    assert not diffs, f"{len(diffs)} figures differ, first: {diffs[:5]}"
