"""The ``scan`` command: exit codes, ``--json``, the report, one-line errors, light imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scan_helpers import run_cli, write_jsonl

# --------------------------------------------------------------------------------------------
# The command


def test_cli_exit_codes_json_and_report(tmp_path: Path, mixed: Any, key_file: Path,
                                        paragraphs: list[str]) -> None:
    path, _, _ = mixed
    r = run_cli("scan", path, "--key", key_file, "--field", "output.text", "--json",
             "--out", tmp_path / "r.parquet", "--html", tmp_path / "rep.html")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    for k in ("statistic", "pvalue", "log10_pvalue", "n_scored", "n_tokens", "n_keys",
              "verdict", "n_records_read", "n_records_scored", "n_records_skipped",
              "n_flagged", "fraction", "fraction_ci_low", "fraction_ci_high",
              "detectable_fraction", "key_id", "per_key"):
        assert k in d, k
    assert d["fraction_estimated"] is True
    assert d["verdict"] == "watermarked" and r.stderr == ""
    page = (tmp_path / "rep.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3 and "watermarked" in page
    secret = json.loads(key_file.read_text())["secret"]
    assert secret not in page and d["key_id"] in page
    human = write_jsonl(tmp_path / "h.jsonl", [{"text": p} for p in paragraphs[:100]])
    r = run_cli("scan", human, "-k", key_file, "--field", "text")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("dataset: not watermarked (p = ")
    assert lines[1].startswith("records: 100 read, 100 scored, 0 skipped; ")
    assert lines[-1].startswith("evidence: a watermark on ")


def test_cli_errors_are_one_line(tmp_path: Path, key_file: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n[1, 2]\n', encoding="utf-8")
    r = run_cli("scan", bad, "-k", key_file, "--field", "text", "--out", tmp_path / "o.jsonl")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == (f"distillmark: error: {bad}:2: no field 'text' (the value above it is "
                        "a list, not an object) (--skip-bad skips bad records)\n")
    assert not (tmp_path / "o.jsonl").exists()
    r = run_cli("scan", bad, "-k", key_file)
    assert (r.exit_code, r.stderr) == (
        2, "distillmark: error: give one of --field PATH or --chat PATH\n")
    r = run_cli("scan", tmp_path / "nope.jsonl", "-k", key_file, "--field", "text")
    assert r.stderr == f"distillmark: error: {tmp_path / 'nope.jsonl'}: no such file or " \
                       "directory\n"
    r = run_cli("scan", bad, "-k", key_file, "--field", "text", "--fdr", "2")
    assert (r.exit_code, r.stderr) == (
        2, "distillmark: error: --fdr must be in (0, 1), got 2.0\n")
    r = run_cli("scan", bad, "-k", key_file, "--field", "text", "--out", tmp_path / "o.csv")
    assert r.stderr == "distillmark: error: --out must end in .jsonl or .parquet, got o.csv\n"
    r = run_cli("scan", bad, "-k", key_file, "--field", "text", "--skip-bad", "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 1 and d["verdict"] == "insufficient evidence"
    assert (d["n_records_read"], d["n_records_scored"], d["n_records_skipped"]) == (2, 1, 1)
    # with no --out and no --rejects, the skipped records are named on stderr
    skipped = (f"distillmark: skipped {bad}:2: no field 'text' (the value above it is a list, "
               "not an object)\n")
    assert r.stderr == skipped
    r = run_cli("scan", bad, "-k", key_file, "--field", "text", "--skip-bad")
    assert r.stderr == skipped and "1 skipped (named on stderr)" in r.stdout
    r = run_cli("scan", bad, "-k", key_file, "--field", "text", "--skip-bad", "--out",
             tmp_path / "r.jsonl")
    assert r.stderr == "" and f"1 skipped (see {tmp_path / 'r.jsonl.rejects.jsonl'})" in r.stdout


def test_scan_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys, distillmark.cli.main, distillmark.verify.scan; "
            "print(sorted(m for m in ('dask', 'distributed', 'pyarrow', 'matplotlib', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
