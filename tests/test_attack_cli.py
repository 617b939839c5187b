"""``distillmark attack``: what each attack writes, its exit codes and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer

RUNNER = CliRunner()
TEXT = ("The committee met on Tuesday to discuss the budget. After a long debate, the members "
        "agreed to postpone the vote until the next session, when more figures are available.")


def run(*args: Any, input: str | None = None) -> Any:
    result = RUNNER.invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    return result


@pytest.fixture()
def text(tmp_path: Path) -> Path:
    p = tmp_path / "a.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def _n_tokens(s: str) -> int:
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    return len(tok.encode(s, add_special_tokens=False).ids)


def test_delete_writes_a_shorter_text_and_the_same_seed_the_same_one(text: Path) -> None:
    a = run("attack", "delete", text, "--rate", 0.3, "--seed", 4)
    b = run("attack", "delete", text, "--rate", 0.3, "--seed", 4)
    assert a.exit_code == 0 and a.stdout == b.stdout
    assert _n_tokens(a.stdout) < _n_tokens(TEXT)


def test_insert_json_counts_the_tokens_added(text: Path) -> None:
    r = run("attack", "insert", text, "--rate", 0.5, "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["n_tokens_out"] == d["n_tokens_in"] + d["n_edited"] > 0


def test_out_is_written_and_stdin_is_read(tmp_path: Path) -> None:
    out = tmp_path / "o.txt"
    r = run("attack", "substitute", "--rate", 0.5, "-o", out, input=TEXT)
    assert r.exit_code == 0 and r.stdout == ""
    assert out.read_text(encoding="utf-8").strip() and out.read_text(encoding="utf-8") != TEXT


def test_dilution_keeps_the_text_whole_inside_the_human_text(tmp_path: Path, text: Path) -> None:
    human = tmp_path / "h.txt"
    human.write_text(" ".join(["plain words of a human"] * 100), encoding="utf-8")
    r = run("attack", "dilute", text, "--into", human, "--share", 0.25, "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and TEXT in d["text"]
    assert d["n_tokens_in"] / d["n_tokens_out"] == pytest.approx(0.25, abs=0.01)


def test_spoof_learns_from_answers(tmp_path: Path, text: Path) -> None:
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"text": TEXT.replace("the", w)}) + "\n"
                               for w in ("a", "our", "this")), encoding="utf-8")
    r = run("attack", "spoof", text, "--learn", answers, "--base", text, "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["n_answers"] == 3 and d["attack"] == "spoof"
    assert d["n_edited"] > 0 and d["text"] != TEXT


@pytest.mark.parametrize(("args", "line"), [
    (["bogus"], ("unknown attack 'bogus'; choose one of substitute, delete, insert, dilute, "
                 "paraphrase, spoof, scrub")),
    (["substitute"], "substitute needs --rate (the share of tokens edited)"),
    (["substitute", "--rate", "1.5"], "`rate` must be in [0, 1], got 1.5"),
    (["dilute", "--share", "0.1"], "dilute needs --into HUMAN.txt and --share"),
    (["scrub", "--learn", "x.jsonl"], "scrub needs --learn ANSWERS.jsonl and --base BASE"),
    (["spoof", "--learn", "missing.jsonl", "--base", "missing.txt"],
     "missing.jsonl: no such answers file"),
])
def test_errors_are_one_line_and_exit_2(text: Path, args: list[str], line: str) -> None:
    r = run("attack", args[0], text, *args[1:])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and line in r.stderr


def test_a_missing_file_is_named_and_nothing_is_written(tmp_path: Path, text: Path) -> None:
    out = tmp_path / "o.txt"
    r = run("attack", "delete", text, tmp_path / "nope.txt", "--rate", 0.1, "-o", out)
    assert r.exit_code == 2 and "nope.txt: no such file" in r.stderr and not out.exists()
