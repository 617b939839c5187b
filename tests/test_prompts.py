"""Prompt sets: the built-in set and prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillmark.verify.prompts import TEMPLATES, TOPICS, builtin_prompts, read_prompts
from distillmark.watermark import InputError


def test_builtin_prompts_are_distinct_and_varied() -> None:
    allp = builtin_prompts()
    assert len(allp) == len(TEMPLATES) * len(TOPICS) == len(set(allp))
    first = builtin_prompts(40)
    assert first == allp[:40]
    # any prefix mixes templates and topics
    assert len({p.split()[0] for p in first}) > 5
    assert sum(any(t in p for p in first) for t in TOPICS) >= 30
    with pytest.raises(InputError, match="has 1840 prompts, 5000 asked"):
        builtin_prompts(5000)


def test_read_prompts_text_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second one\n")
    assert read_prompts(txt) == ["first prompt", "  second one"]
    js = tmp_path / "p.jsonl"
    js.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b", "x": 1}) + "\n")
    assert read_prompts(js) == ["a", "b"]


@pytest.mark.parametrize(("content", "message"), [
    (b'{"prompt": "a"}\n{"prompt": \n',
     "p.jsonl:2: not valid JSON: Expecting value at column 12"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
     "p.jsonl:1: JSON arrays or objects nested too deeply"),
    (b'{"prompt": "a"}\n{"text": "b"}\n', "p.jsonl:2: record has no 'prompt' field"),
    (b'{"prompt": 3}\n', "p.jsonl:1: 'prompt' must be a non-empty string"),
    (b'{"prompt": "ok"}\n\xff\xfe\n', "p.jsonl:2: not valid UTF-8"),
    (b"\n\n", "p.jsonl: no prompts in the file"),
])
def test_read_prompts_errors_name_file_and_line(tmp_path: Path, content: bytes,
                                                message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("'", "'")):
        read_prompts(path)
    with pytest.raises(InputError, match="no such prompts file"):
        read_prompts(tmp_path / "missing.txt")


def test_prompts_from_a_request_log(tmp_path):
    from distillmark.verify.prompts import prompts_from_log
    from distillmark.watermark.serve.log import RequestLog

    log = RequestLog(tmp_path / "r.jsonl")
    for account, question in [("a", "q1"), ("b", "q2"), ("a", "q3"), ("a", "q1")]:
        log.record(request_id="r", account=account, number=1, key_id="k", model="m",
                   messages=[{"role": "system", "content": "be brief"},
                             {"role": "user", "content": question}], answers=["x"], usage={})
    log.close()
    assert prompts_from_log(tmp_path / "r.jsonl", account="a") == ["q1", "q3"]
    assert prompts_from_log(tmp_path / "r.jsonl") == ["q1", "q2", "q3"]
    with pytest.raises(InputError, match="holds no prompts of account 'c' \\(0 requests\\)"):
        prompts_from_log(tmp_path / "r.jsonl", account="c")
    hashed = RequestLog(tmp_path / "h.jsonl", hashes_only=True)
    hashed.record(request_id="r", account="a", number=1, key_id="k", model="m",
                  messages=[{"role": "user", "content": "q"}], answers=["x"], usage={})
    hashed.close()
    with pytest.raises(InputError, match="keeps only digests"):
        prompts_from_log(tmp_path / "h.jsonl")


def test_prompt_and_reference_files_are_read_bounded() -> None:
    """The limit holds for the bytes read: /dev/zero (size 0) is cut off, not read for ever."""
    from distillmark.verify.textfiles import read_input

    with pytest.raises(InputError, match=r"^/dev/zero: prompts file larger than 1000 bytes$"):
        read_input(Path("/dev/zero"), "prompts", max_bytes=1000)

