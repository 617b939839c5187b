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


# -- the verifiers agree with each other on the same inputs ------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> tuple[object, object]:
    from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer

    return load_tokenizer(BUILTIN_SMOLLM2)


def _texts(label, name, params, smollm2):
    from distillmark.watermark import new_spec, scheme_for

    tok, info = smollm2
    spec = new_spec(name, params, info, secret=record_scoring.SECRET)
    seqs = record_scoring._inputs(scheme_for(spec), spec.vocab_size)
    return spec, [tok.decode(s.tolist()) for s in seqs if s.size > 2]


@pytest.mark.parametrize("label,name,params", record_scoring.CASES,
                         ids=[c[0] for c in record_scoring.CASES])
def test_scan_records_equal_detect(label, name, params, smollm2, tmp_path):
    """Each record of a scan is tested as detect tests the same text alone: the same bits, for
    every scheme (those whose keys span 64 bits too)."""
    from distillmark.verify import Detector
    from distillmark.verify.scan import scan

    spec, texts = _texts(label, name, params, smollm2)
    data, rows = tmp_path / "d.jsonl", tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    scan([data], [spec], field="text", out=rows)
    det = Detector(spec)
    got = [json.loads(line) for line in rows.read_text(encoding="utf-8").splitlines()]
    assert len(got) == len(texts)
    for row, text in zip(got, texts):
        want = det.detect(text).to_dict()
        assert {k: row[k] for k in ("n_tokens", "n_scored", "statistic", "pvalue",
                                    "log10_pvalue", "score_mean")} == \
            {k: want[k] for k in ("n_tokens", "n_scored", "statistic", "pvalue",
                                  "log10_pvalue", "score_mean")}


@pytest.mark.parametrize("label,name,params", record_scoring.CASES,
                         ids=[c[0] for c in record_scoring.CASES])
def test_batch_and_pooled_tests_agree(label, name, params, smollm2):
    """A batch is tested as its texts one by one, and probe's pooled test of answers is the
    aggregate's test of the same texts."""
    from distillmark.verify import AggregateAccumulator, Detector, detect_ids, detect_ids_batch
    from distillmark.verify.probe import score_answers

    spec, texts = _texts(label, name, params, smollm2)
    det = Detector(spec)
    seqs = [det.encode(t) for t in texts]
    plens = [min(3, s.size) for s in seqs]
    assert detect_ids_batch(seqs, det.scheme, prompt_lens=plens) == [
        detect_ids(s, det.scheme, prompt_len=p) for s, p in zip(seqs, plens)]
    acc = AggregateAccumulator(det.scheme)
    acc.add_batch(seqs)
    pooled = score_answers([("", t) for t in texts], spec)
    assert pooled.aggregate == acc.result()
    assert pooled.to_dict(1e-3)["pvalue"] == acc.result().pvalue
