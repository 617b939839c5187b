"""The documentation against the product, so that neither can drift from the other.

- docs/cli.md has a section per command, naming every option of it (read from the typer app
  itself), and its synopses name no option the command does not have;
- every list of JSON keys in docs/cli.md ("JSON keys ...: `a`, `b`, ...") is exactly the set of
  keys the command prints with ``--json``, run here on small inputs;
- the README's Python blocks run as written, on a tiny random model in place of SmolLM2 and a
  tiny served model in place of the suspect's endpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    PRESETS,
    SCHEMES,
    WatermarkSpec,
    load_tokenizer,
    new_spec,
    save_spec,
)
from distillmark.watermark.accounts import AccountLayerParams
from distillmark.watermark.tokenizer import builtin_tokenizer_path

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"
RUNNER = CliRunner()
IM_END = "<|im_end|>"


def sections() -> dict[str, str]:
    """docs/cli.md's ``## name ...`` sections, by their first word."""
    parts = re.split(r"^## ", CLI_MD.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]
    return {p.split()[0]: p for p in parts}


def commands() -> dict[str, Any]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def option_names(cmd: Any) -> set[str]:
    """Every name of every visible option: ``--key``, ``-k``, ``--no-students``, ...; a
    command group's (``report``) are its subcommands'."""
    names = {name for p in cmd.params if p.param_type_name == "option" and not p.hidden
             for name in (*p.opts, *p.secondary_opts)}
    for sub in getattr(cmd, "commands", {}).values():
        names |= option_names(sub)
    return names


def mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def synopses(section: str, command: str) -> str:
    """The usage lines of a section: its indented ``distillmark COMMAND ...`` blocks."""
    out, inside = [], False
    for line in section.splitlines():
        if line.startswith(f"    distillmark {command}"):
            inside = True
        elif not line.startswith("        "):
            inside = False
        if inside:
            out.append(line)
    return "\n".join(out)


def documented_keys(command: str) -> dict[str, set[str]]:
    """The section's lists of JSON keys, by their label: ``JSON keys of the summary: `a`,
    `b`.`` gives ``{"of the summary": {"a", "b"}}``."""
    out = {}
    for para in sections()[command].split("\n\n"):
        para = " ".join(para.split())
        if para.startswith("JSON keys"):
            label, _, body = para.partition(":")
            out[label.removeprefix("JSON keys").strip()] = set(
                re.findall(r"`([a-z][a-z0-9_]*)`", body))
    return out


def page_keys(page: str, start: str) -> set[str]:
    """The JSON keys a page lists in its paragraph (or table row) that starts with ``start``."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    for para in [*text.split("\n\n"), *text.splitlines()]:
        para = " ".join(para.split())
        if para.startswith(start):
            return set(re.findall(r"`([a-z][a-z0-9_]*)`", para))
    raise AssertionError(f"docs/{page}: no paragraph starts with {start!r}")


def cli(*args: Any, input: str | None = None, code: int | None = None) -> Any:
    result = RUNNER.invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert result.exit_code in ((0, 1) if code is None else (code,)), result.stderr
    return result


def json_lines(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------------------------
# Options


def test_every_command_has_a_section() -> None:
    assert set(commands()) <= set(sections())
    assert set(sections()) - set(commands()) == {"Files"}


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_option_is_documented_under_its_command(command: str) -> None:
    section = sections()[command]
    missing = sorted(n for n in option_names(commands()[command]) if not mentions(section, n))
    assert not missing, f"docs/cli.md, section {command}: options not documented: {missing}"


@pytest.mark.parametrize("command", sorted(commands()))
def test_synopses_name_only_real_options(command: str) -> None:
    usage = synopses(sections()[command], command)
    assert usage, f"docs/cli.md, section {command}: no synopsis"
    named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", usage))
    unknown = sorted(named - option_names(commands()[command]))
    assert not unknown, f"docs/cli.md, {command} synopsis: not options of it: {unknown}"


def test_keygen_names_every_preset_and_scheme() -> None:
    usage = synopses(sections()["keygen"], "keygen")
    preset = re.search(r"--preset ([\w|-]+)", usage)
    assert preset and set(preset.group(1).split("|")) == set(PRESETS)
    assert all(mentions(usage, f"--scheme {s}") or f"`{s}`" in sections()["keygen"]
               for s in SCHEMES)


# --------------------------------------------------------------------------------------------
# JSON keys, against the real output


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, human_texts: list[str]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("docs")
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    spec = new_spec("greenlist", {}, info, secret=bytes(range(32)), accounts=AccountLayerParams())
    other = new_spec("greenlist", {}, info, secret=bytes(range(1, 33)))
    text = d / "text.txt"
    text.write_text(human_texts[0], encoding="utf-8")
    data = d / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in human_texts[1:6]))
    from distillmark.watermark.ring import KeyRing, save_ring

    return {"key": save_spec(spec, d / "k.json"), "other": save_spec(other, d / "o.json"),
            "ring": save_ring(KeyRing.first(other).add(spec), d / "ring.json"),
            "text": text, "data": data, "dir": d}


@pytest.fixture(scope="module")
def tiny_model(files: dict[str, Path]) -> Path:
    from serving_helpers import tiny_generator

    d = files["dir"] / "tiny-model"
    lm = tiny_generator(seed=3)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def test_keygen_json_keys(tmp_path: Path) -> None:
    keys = documented_keys("keygen")
    plain = json.loads(cli("keygen", "-o", tmp_path / "a.json", "--no-account-layer",
                           "--json").stdout)
    layered = json.loads(cli("keygen", "-o", tmp_path / "b.json", "--json").stdout)
    assert set(plain) == keys[""]
    assert set(layered) == keys[""] | keys["added for a key with an account layer"]


def test_detect_json_keys(files: dict[str, Path]) -> None:
    keys = documented_keys("detect")
    (one,) = json_lines(cli("detect", "-k", files["key"], "--json", files["text"]))
    (several,) = json_lines(cli("detect", "-k", files["key"], "-k", files["other"], "--json",
                                files["text"]))
    (ring,) = json_lines(cli("detect", "-k", files["ring"], "--json", files["text"]))
    assert set(one) == keys["(one object per input)"]
    added = keys["added with several `--key` or a key ring"]
    assert set(several) == set(ring) == keys["(one object per input)"] | added


def test_keys_json_keys(files: dict[str, Path]) -> None:
    d = json.loads(cli("keys", files["ring"], "--json").stdout)
    assert set(d) == documented_keys("keys")[""]
    keygen = documented_keys("keygen")
    for k in d["keys"]:
        assert set(k) - {"state", "activated", "retired"} <= (
            keygen[""] | keygen["added for a key with an account layer"])


def test_detect_windows_json_keys(files: dict[str, Path]) -> None:
    import numpy as np

    from distillmark.watermark import load_spec, scheme_for

    keys = documented_keys("detect")
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    scheme = scheme_for(load_spec(files["key"]))
    words = np.array(sorted(i for t, i in tok.get_vocab().items()
                            if re.fullmatch("\u0120[a-z]{3,}", t))[:2000])
    ids, rng = [int(words[0])], np.random.default_rng(0)
    for _ in range(150):  # uniform over common words, plus the key's bias
        logits = np.full((1, scheme.vocab_size), -1e4)
        logits[0, words] = 0.0
        w = scheme.process(logits, np.array([ids]))[0, words]
        ids.append(int(rng.choice(words, p=np.exp(w - w.max()) / np.exp(w - w.max()).sum())))
    human = files["text"].read_text(encoding="utf-8")
    marked = files["dir"] / "pasted.txt"
    marked.write_text(human + tok.decode(ids) + "\n" + human, encoding="utf-8")
    (one,) = json_lines(cli("detect", "-k", files["key"], "--windows", "--json", marked))
    assert set(one) == keys["(one object per input)"] | keys["added with `--windows`"]
    assert one["spans"]
    assert set(one["spans"][0]) == keys["of each span in `spans`"]


def test_scan_json_keys(files: dict[str, Path]) -> None:
    keys = documented_keys("scan")
    plain = json.loads(cli("scan", files["data"], "-k", files["key"], "--field", "text",
                           "--json").stdout)
    accounts = json.loads(cli("scan", files["data"], "-k", files["key"], "--field", "text",
                              "--account-space", 10, "--json").stdout)
    assert set(plain) == keys[""]
    assert set(accounts) == keys[""] | keys["added with `--accounts` or `--account-space`"]


def test_calibrate_json_keys(files: dict[str, Path], human_texts: list[str]) -> None:
    corpus = files["dir"] / "corpus.txt"
    corpus.write_text("\n".join(human_texts[:60]), encoding="utf-8")
    d = json.loads(cli("calibrate", "-k", files["key"], corpus, "--json").stdout)
    assert set(d) == documented_keys("calibrate")[""]


def test_attribute_json_keys(files: dict[str, Path]) -> None:
    from distillmark.watermark.serve.log import RequestLog

    keys = documented_keys("attribute")
    log_path = files["dir"] / "requests.jsonl"
    log = RequestLog(log_path)
    log.record(request_id="r", account="acct-1", number=1, key_id="dmk-x", model="m",
               messages=[{"role": "user", "content": "q"}], answers=["a"], usage={})
    log.close()
    *records, summary = json_lines(cli("attribute", "-k", files["key"], "--account-space", 10,
                                       "--json", files["text"]))
    *logged, _ = json_lines(cli("attribute", "-k", files["key"], "--account-space", 10,
                                "--log", log_path, "--json", files["text"]))
    assert records and all(set(r) == keys["of each record"] for r in records)
    assert all(set(r) == keys["of each record"] | keys["added to each record with `--log`"]
               for r in logged)
    assert set(summary) == keys["of the summary"]


def test_probe_json_keys(files: dict[str, Path]) -> None:
    from serving_helpers import MODEL_NAME, serving, tiny_generator

    from distillmark.watermark import load_spec

    with serving(tiny_generator(seed=4), spec=load_spec(files["key"])) as url:
        d = json.loads(cli("probe", "--endpoint", url, "--model", MODEL_NAME, "-k", files["key"],
                           "--n-prompts", 2, "--max-tokens", 24, "--json").stdout)
    assert set(d) == documented_keys("probe")[""]
    assert set(d) == page_keys("probe.md", "`--json` prints one object")


def test_audit_json_keys(files: dict[str, Path], tiny_model: Path) -> None:
    d = json.loads(cli("audit", "-m", tiny_model, "-k", files["key"], "--generate", 2,
                       "--context-len", 16, "--top-k", 4, "--json").stdout)
    assert set(d) == documented_keys("audit")[""]
    assert page_keys("audit.md", "| `--json` |") <= set(d)


def test_attack_json_keys(files: dict[str, Path], tiny_model: Path) -> None:
    keys = documented_keys("attack")
    edit = keys["of an edit (substitute, delete, insert, dilute, spoof, scrub)"]
    (sub,) = json_lines(cli("attack", "substitute", files["text"], "--rate", 0.2, "--json",
                            code=0))
    (dil,) = json_lines(cli("attack", "dilute", files["text"], "--into", files["text"],
                            "--share", 1, "--json", code=0))
    (spoof,) = json_lines(cli("attack", "spoof", files["text"], "--learn", files["data"],
                              "--base", files["data"], "--json", code=0))
    assert set(sub) == set(dil) == edit
    assert set(spoof) == edit | keys["added by spoof and scrub"]
    (para,) = json_lines(cli("attack", "paraphrase", files["text"], "--model", tiny_model,
                             "--engine", "transformers", "--chunk-tokens", 400, "--json",
                             code=0))
    assert set(para) == keys["of a paraphrase"]


def test_generate_and_demo_json_keys(files: dict[str, Path], tiny_model: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from distillmark.verify.lab import StudentResult

    rows = json_lines(cli("generate", "--model", tiny_model, "--engine", "transformers", "-k",
                          files["key"], "--max-new-tokens", 8, "--json", "Hi", "Bye"))
    assert [set(r) for r in rows] == [documented_keys("generate")["(one object per answer)"]] * 2
    keys = documented_keys("demo")
    answers = json_lines(cli("demo", "--model", tiny_model, "--engine", "transformers",
                             "--max-new-tokens", 40, "--no-students", "--json"))
    assert [r["kind"] for r in answers] == ["watermarked"] * 4 + ["control"] * 4
    assert all(set(r) == keys["of each answer"] for r in answers if r["text"].strip())

    # a student's object, from the very method the demo prints it with (training, serving and
    # probing two students takes minutes: tests/test_cli.py runs that story)
    class Stub:
        def to_dict(self, alpha: float | None = None) -> dict[str, Any]:
            return {}

    stub: Any = Stub()
    student = StudentResult(name="s", marked=True, n_train=4, train={}, probe=stub,
                            audit=stub, seconds=1.0)
    assert {"kind", *student.to_dict(1e-3)} == keys["of each student"]


# --------------------------------------------------------------------------------------------
# The README's Python


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"),
                      flags=re.MULTILINE | re.DOTALL)


def test_the_readme_python_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from serving_helpers import MODEL_NAME, serving, tiny_generator
    from transformers import PreTrainedTokenizerFast

    from distillmark.verify.lab import students
    from distillmark.watermark import hf, load_spec

    monkeypatch.chdir(tmp_path)
    assert cli("keygen", "--out", "wm.json").exit_code == 0
    lm = tiny_generator(seed=6)
    monkeypatch.setattr(hf, "load_model", lambda *a, **k: lm)  # SmolLM2's stand-in
    tok_dir = tmp_path / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()), eos_token=IM_END,
                            pad_token=IM_END).save_pretrained(tok_dir)
    monkeypatch.setattr(students, "default_tokenizer_dir", lambda *a: tok_dir)
    blocks = python_blocks(README)
    assert len(blocks) == 3 and all(blocks)
    suspect = '"http://suspect:8000", "their-model"'
    assert suspect in blocks[2]
    namespace: dict[str, Any] = {}
    spec: WatermarkSpec = load_spec("wm.json")
    with serving(tiny_generator(seed=7), spec=spec) as url:  # the suspect: it learnt the mark
        for block in blocks:
            code = block.replace(suspect, f'"{url}", "{MODEL_NAME}"')
            exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("watermarked ")
    assert printed[1:] == ["watermarked", "watermarked"]
    assert (tmp_path / "student" / "config.json").is_file()
    assert namespace["ids"].shape[1] > namespace["inputs"]["input_ids"].shape[1]
