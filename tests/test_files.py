"""files.py: bounded reads, JSON with one-line errors, atomic writes that fail in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from distillmark.watermark import InputError, SpecError
from distillmark.watermark.files import (
    JSONProblem,
    atomic_write,
    check_writable,
    decode_json,
    parse_json,
)

DEEP = "[" * 100_000 + "]" * 100_000
NO_NAME = "not valid JSON: Expecting property name enclosed in double quotes"


@pytest.mark.parametrize(("text", "line", "message"), [
    ('{"a": 1,}', False, NO_NAME + " at line 1 column 9"),
    ('{"a": 1,}', True, NO_NAME + " at column 9"),
    ("\n\n[1 2]", False, "not valid JSON: Expecting ',' delimiter at line 3 column 4"),
    (DEEP, True, "JSON arrays or objects nested too deeply"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, False, "JSON arrays or objects nested too deeply"),
    ("1" * 5000, True, "a JSON number with more than 4300 digits"),
])
def test_every_json_failure_is_one_problem(text: str, line: bool, message: str) -> None:
    with pytest.raises(JSONProblem) as exc:
        parse_json(text, line=line)
    assert str(exc.value) == message
    assert exc.value.too_deep == message.startswith("JSON arrays")


def test_the_pairs_hooks_own_refusal_passes_through() -> None:
    def no_twice(items: list[tuple[str, object]]) -> dict[str, object]:
        if len({k for k, _ in items}) < len(items):
            raise InputError("a key appears twice")
        return dict(items)

    with pytest.raises(InputError, match=r"^a key appears twice$"):
        parse_json('{"k": 1, "k": 2}', object_pairs_hook=no_twice)


def test_lone_surrogates_become_replacement_characters() -> None:
    """A \\ud800 escape without its pair is no character: no tokenizer, no UTF-8 file takes
    it. Pairs stay the characters they encode; an escaped backslash stays text."""
    got = parse_json('{"a\\ud800": ["x\\udc00y", {"k": "\\ud83d\\ude00 \\uD83D"}], "n": 1}')
    assert got == {"a\ufffd": ["x\ufffdy", {"k": "\U0001f600 \ufffd"}], "n": 1}
    assert parse_json('"\\\\ud800"') == "\\ud800"
    deep = parse_json("[" * 500 + '"\\udfff"' + "]" * 500)
    for _ in range(500):
        deep = deep[0]
    assert deep == "\ufffd"


def test_decode_json_names_what_it_read() -> None:
    assert parse_json('{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(SpecError, match=r"^key file k nests JSON arrays or objects too deeply$"):
        decode_json(DEEP.encode(), what="key file k", error=SpecError)
    with pytest.raises(InputError, match=r"^the body is not valid JSON: Expecting value at line 1 "
                                         r"column 1$"):
        decode_json(b"", what="the body")
    with pytest.raises(InputError, match=r"^the body is a JSON number with more than 4300 "
                                         r"digits$"):
        decode_json(b"9" * 4301, what="the body")
    with pytest.raises(InputError, match=r"^the body is not UTF-8 \(byte offset 1\)$"):
        decode_json(b"[\xff]", what="the body")


def test_outputs_that_cannot_be_written_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    cases = [
        (tmp_path / "missing" / "out.jsonl",
         (f"cannot write --out {tmp_path / 'missing' / 'out.jsonl'}: folder "
         f"{tmp_path / 'missing'} does not exist")),
        (a_file / "out.jsonl", (f"cannot write --out {a_file / 'out.jsonl'}: {a_file} is not a "
                               "folder")),
        (tmp_path, f"cannot write --out {tmp_path}: it is a directory"),
    ]
    for path, message in cases:
        with pytest.raises(InputError) as exc:
            check_writable(path, what=f"--out {path}")
        assert str(exc.value) == message
        with pytest.raises(InputError) as exc, atomic_write(path, what=f"--out {path}") as fh:
            fh.write("never")
        assert str(exc.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    check_writable(tmp_path / "fine.json")  # leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_write_turns_errors_of_writing_into_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(InputError, match=r"^cannot write .*out\.json: No space left on device$"), \
            atomic_write(out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    # an error about another file the block reads passes through as it is
    with pytest.raises(FileNotFoundError), atomic_write(out) as fh:
        fh.write((tmp_path / "gone.txt").read_text())
    assert list(tmp_path.iterdir()) == []
    with atomic_write(out) as fh:
        fh.write("whole")
    assert out.read_text() == "whole"
