"""Errors of option parsing and interrupts: one line on stderr, like every other error, and the
exit status a script can rely on (2 for a usage error, 130 for Ctrl-C); help stays typer's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from distillmark.cli.main import app

RUNNER = CliRunner()


def run(*args: Any, input: str | None = None) -> Any:
    return RUNNER.invoke(app, [str(a) for a in args], input=input)


@pytest.mark.parametrize(("args", "line"), [
    (["detect", "a.txt"],
     "detect: missing option '--key' / '-k' (see distillmark detect --help)"),
    (["detect", "-k", "k.json", "--alpha", "abc", "a.txt"],
     "detect: invalid value for '--alpha': "),
    (["detect", "-k", "k.json", "--min-scored", "1.5", "a.txt"],
     "detect: invalid value for '--min-scored': "),
    (["detect", "--bogus"], "detect: no such option: --bogus (see distillmark detect --help)"),
    (["scan", "data.jsonl"], "scan: missing option '--key' / '-k' (see distillmark scan --help)"),
    (["keygen", "--out"], "option '--out' requires an argument"),
    (["nocmd"], "no such command 'nocmd' (see distillmark --help)"),
])
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("distillmark: error: " + line)
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n")


def test_a_near_miss_command_is_suggested_on_the_same_line() -> None:
    result = run("detecct")
    assert result.exit_code == 2
    assert result.stderr == ("distillmark: error: no such command 'detecct'. Did you mean "
                             "'detect'? (see distillmark --help)\n")


def test_keygen_refuses_alpha_naming_its_new_name(tmp_path: Path) -> None:
    """--alpha is the significance level everywhere else; DiPmark's strength has its own name."""
    result = run("keygen", "-o", tmp_path / "k.json", "--scheme", "dipmark", "--alpha", "0.4")
    assert result.exit_code == 2 and not (tmp_path / "k.json").exists()
    assert result.stderr == ("distillmark: error: keygen's --alpha is now --dipmark-alpha "
                             "(DiPmark's reweighting strength); --alpha is the significance "
                             "level of the tests\n")
    shown = " ".join(run("keygen", "--help").stdout.split()).replace("--dipmark-alpha", "")
    assert "--alpha" not in shown and "--dipmark-alpha" in run("keygen", "--help").stdout


def test_help_is_still_typers() -> None:
    result = run("detect", "--help")
    assert result.exit_code == 0 and result.stderr == ""
    assert "--key" in result.stdout and "Exit status" in " ".join(result.stdout.split())
    top = run()  # no arguments: the list of commands
    assert "keygen" in top.stdout and "distillmark: error" not in top.stdout + top.stderr


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: Any, **__: Any) -> str:
        raise KeyboardInterrupt

    # outside any library call (reading an input): the command group reports it
    monkeypatch.setattr("distillmark.cli.detect.read_text", interrupted)
    key = tmp_path / "k.json"
    assert run("keygen", "--out", key).exit_code == 0
    result = run("detect", "-k", key, "a.txt")
    assert result.exit_code == 130
    assert result.stderr == "distillmark: error: interrupted\n"
    # inside one (loading the key): the command's own handler, the same line
    monkeypatch.setattr("distillmark.cli.detect.read_key_file", interrupted)
    result = run("detect", "-k", key, "a.txt")
    assert (result.exit_code, result.stderr) == (130, "distillmark: error: interrupted\n")


def test_the_installed_entry_point_prints_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "distillmark", "detect", "a.txt"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("distillmark: error: detect: missing option '--key' / '-k' "
                           "(see python -m distillmark detect --help)\n")


#: Modules a run of ``distillmark detect`` must not import: scipy's statistics and its special
#: functions' array-API layer (which imports most of numpy's submodules), the stacks of other
#: commands, and the modules of the other commands themselves.
NOT_FOR_DETECT = ("scipy.stats", "scipy.special", "scipy._lib._array_api", "numpy.f2py",
                  "numpy.testing", "torch", "transformers", "fastapi", "httpx", "dask",
                  "distillmark.verify.aggregate", "distillmark.verify.fraction",
                  "distillmark.verify.probe", "distillmark.verify.scan",
                  "distillmark.cli.scan", "distillmark.cli.serve", "distillmark.cli.audit",
                  "distillmark.cli.attribute", "distillmark.cli.probe", "distillmark.cli.demo",
                  "distillmark.watermark.serve")


def test_detect_imports_only_what_it_needs(spec_factory: Any, tmp_path: Path) -> None:
    """``distillmark detect`` loads its own command and scipy's compiled special functions
    alone, and gives the p-value of the library with everything loaded, bit for bit."""
    from distillmark.verify import Detector
    from distillmark.watermark import save_spec

    spec = spec_factory()
    key = save_spec(spec, tmp_path / "k.json")
    text = ("The committee met on Tuesday to discuss the budget for the coming year, and after "
            "a long debate it agreed to fund the new library, the repairs to the bridge and a "
            "study of the town's water supply. ") * 3
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    code = ("import sys\n"
            "from distillmark.cli.main import main\n"
            f"sys.argv = ['distillmark', 'detect', '--json', '-k', {str(key)!r}, "
            f"{str(tmp_path / 'a.txt')!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    status = exc.code\n"
            f"print(sorted(m for m in {NOT_FOR_DETECT!r} if m in sys.modules))\n"
            "print('scipy.special._ufuncs' in sys.modules, status)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    result, loaded, ufuncs = proc.stdout.splitlines()
    assert loaded == "[]"
    assert ufuncs == "True 1"
    import json

    got = json.loads(result)
    want = Detector(spec).detect(text).to_dict(1e-3)
    assert got["pvalue"] == want["pvalue"] and got["log10_pvalue"] == want["log10_pvalue"]
    assert got["n_scored"] == want["n_scored"] > 25
