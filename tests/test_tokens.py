"""Per-token detail: the very test detect runs, token by token."""

from __future__ import annotations

from typing import Any

import pytest

from distillmark.verify import Detector
from distillmark.verify.detect import CHUNK_CHARS
from distillmark.verify.tokens import RUNNING_POINTS, token_detail
from distillmark.watermark import InputError, new_spec


@pytest.mark.parametrize(("scheme", "params"), [
    ("greenlist", {}), ("greenlist", {"context_width": 0}), ("gumbel", {}),
    ("tournament", {}), ("dipmark", {}),
])
@pytest.mark.parametrize("prompt", [None, "Write about arrays."])
def test_detail_is_detects_test(scheme: str, params: dict[str, Any], prompt: str | None,
                                tokenizer_info: Any, human_texts: list[str],
                                marked: list[str]) -> None:
    spec = new_spec(scheme, params, tokenizer_info, secret=bytes(range(32)))
    det = Detector(spec)
    for text in (human_texts[0][:3000], marked[2] + " " + marked[2]):
        d = token_detail(det, text, prompt=prompt)
        assert d.result == det.detect(text, prompt=prompt)  # bit for bit
        assert "".join(d.pieces) == (prompt or "") + text
        assert len(d.pieces) == len(d.status) == d.result.n_tokens + d.n_prompt
        r = d.result
        assert d.status.count("g") + d.status.count("n") == r.n_scored
        assert d.status.count("r") == r.n_repeated
        assert d.status[:d.n_prompt] == "u" * d.n_prompt
        assert d.running[-1][1] == r.log10_pvalue
        assert len(d.running) <= RUNNING_POINTS
        assert [i for i, _ in d.running] == sorted(i for i, _ in d.running)
        if r.test == "binomial":
            assert d.status.count("g") == r.statistic


def test_watermarked_text_is_mostly_green(spec_factory: Any, marked: list[str]) -> None:
    det = Detector(spec_factory())
    d = token_detail(det, marked[3])
    assert d.status.count("g") > 2 * d.status.count("n")
    assert d.running[-1][1] < -5


def test_long_texts_are_cut_as_detect_cuts_them(spec_factory: Any,
                                                human_texts: list[str]) -> None:
    det = Detector(spec_factory())
    text = "\n".join(human_texts)
    while len(text) <= CHUNK_CHARS:
        text += "\n" + text
    d = token_detail(det, text)
    assert d.result == det.detect(text)
    assert "".join(d.pieces) == text


def test_empty_text_is_refused(spec_factory: Any) -> None:
    with pytest.raises(InputError, match="text is only whitespace"):
        token_detail(Detector(spec_factory()), "  \n")
