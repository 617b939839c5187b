"""Reports a third party can check: the canonical form, reproduction, no secret inside, and the
``--report``/``--sign`` options of the verification commands."""

from __future__ import annotations

import base64
import json
import math
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scan_helpers import run_cli, write_jsonl

from distillmark.verify.report import (
    canonical_json,
    pvalue_string,
    read_report,
    unsigned_bytes,
)
from distillmark.watermark import InputError, WatermarkSpec, new_spec, save_spec
from distillmark.watermark.accounts import AccountLayerParams

# --------------------------------------------------------------------------------------------
# The canonical form


@pytest.mark.parametrize(("value", "text"), [
    (1e-7, "1e-7"), (1e21, "1e+21"), (2.0, "2"), (0.1, "0.1"), (-0.0, "0"),
    (1.5e20, "150000000000000000000"), (123.456, "123.456"), (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (1e-6, "0.000001"),
    (0.000123, "0.000123"), (-2.5, "-2.5"), (12345671250000000.0, "12345671250000000"),
    (float("inf"), '"Infinity"'), (float("-inf"), '"-Infinity"'), (float("nan"), '"NaN"'),
    (7, "7"), (True, "true"), (None, "null"),
])
def test_numbers_are_written_as_ecmascript_writes_them(value: Any, text: str) -> None:
    assert canonical_json(value) == text.encode()


def test_strings_and_member_order_follow_rfc_8785() -> None:
    value = {"b": "\u2028é\x01\n\"\\", "a": [1, {"z": 0, "y": None}],
             "\ue000": 1, "\U0001f600": 2}
    # members sorted by UTF-16 code units: U+1F600 (D83D DE00) before U+E000
    assert canonical_json(value) == (
        '{"a":[1,{"y":null,"z":0}],"b":"\u2028é\\u0001\\n\\"\\\\",'
        '"\U0001f600":2,"\ue000":1}').encode("utf-8")


def test_canonical_bytes_survive_a_json_round_trip() -> None:
    rng = random.Random(5)
    for _ in range(300):
        x = rng.choice([rng.random() * 10 ** rng.randint(-30, 30), rng.randint(-10**9, 10**9),
                        math.ldexp(rng.random(), rng.randint(-1070, 1020))])
        doc = {"x": x, "s": "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(8))}
        data = canonical_json(doc)
        assert canonical_json(json.loads(data)) == data


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the "
                    "cross-check against ECMAScript's own JSON.stringify needs it")
def test_numbers_match_javascript() -> None:
    rng = random.Random(9)
    xs = [math.ldexp(rng.random(), rng.randint(-1070, 1020)) for _ in range(200)]
    xs += [rng.random() * 10 ** rng.randint(-9, 25) for _ in range(200)]
    script = ("let s='';process.stdin.on('data',d=>s+=d);"
              "process.stdin.on('end',()=>process.stdout.write(JSON.stringify(JSON.parse(s))))")
    js = subprocess.run(["node", "-e", script],
                        input=json.dumps(xs), capture_output=True, text=True, check=True)
    assert canonical_json(xs).decode() == js.stdout


def test_pvalue_string_is_exact_and_survives_underflow() -> None:
    assert float(pvalue_string(3.0517578125e-05, math.log10(3.0517578125e-05))) == \
        3.0517578125e-05
    assert pvalue_string(0.0, -412.25) == "10^-412.25"


# --------------------------------------------------------------------------------------------
# detect and scan: reproduction, no secret, signatures


def _without_run(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("created", "signature")}


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signing") / "signer"
    r = run_cli("keygen", "--signing", "--out", path)
    assert r.exit_code == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory, marked: list[str]) -> Path:
    path = tmp_path_factory.mktemp("text") / "answer.txt"
    path.write_text(marked[0], encoding="utf-8")
    return path


def test_detect_report_reproduces_but_time_and_signature(
        tmp_path: Path, key_file: Path, text_file: Path, signing: Path,
        spec: WatermarkSpec) -> None:
    reports = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        r = run_cli("detect", "-k", key_file, text_file, "--prompt", "Answer:", "--report", out,
                    "--sign", signing, "--alpha", "0.01")
        assert r.exit_code == 0, r.stderr
        reports.append(read_report(out))
        assert out.read_bytes() == canonical_json(reports[-1])  # written canonically
    a, b = reports
    assert _without_run(a) == _without_run(b)
    assert a["test"]["decision"] == "watermarked" and a["command"] == "detect"
    assert a["inputs"][0]["size"] == text_file.stat().st_size
    assert a["keys"][0]["key_id"] == spec.key_id
    assert a["tokenizer"]["sha256"] == spec.tokenizer.sha256
    assert a["options"] == {"alpha": 0.01, "min_scored": 25, "prompt": "Answer:",
                            "windows": False}
    assert float(a["test"]["pvalue"]) == a["result"]["pvalue"]
    c = a["counts"]
    assert c["tokens"] == c["scored"] + c["repeated"] + c["skipped"]
    detail = a["details"]["texts"][0]
    assert "".join(detail["pieces"]) == "Answer:" + text_file.read_text(encoding="utf-8")
    assert detail["running"][-1][1] == a["test"]["log10_pvalue"]
    pem_body = "".join(signing.read_text().splitlines()[1:-1]).encode()
    assert pem_body[:24] not in (tmp_path / "r0.json").read_bytes()


def test_key_ring_report_names_the_deciding_key(tmp_path: Path, key_file: Path,
                                                text_file: Path, spec_factory: Any) -> None:
    other = save_spec(spec_factory(secret=bytes(range(1, 33))), tmp_path / "other.json")
    out = tmp_path / "ring.json"
    assert run_cli("detect", "-k", other, "-k", key_file, text_file, "--report",
                   out).exit_code == 0
    rep = read_report(out)
    assert [k["key_id"] for k in rep["keys"]] == [spec_factory(secret=bytes(range(1, 33))).key_id,
                                                   rep["details"]["key_id"]]
    assert rep["test"]["n_tests"] == 2 and rep["test"]["correction"] == "bonferroni"
    assert rep["result"]["uncorrected_log10_pvalue"] == \
        rep["details"]["texts"][0]["running"][-1][1]


def test_scan_report_reproduces_but_time_and_signature(
        tmp_path: Path, key_file: Path, marked: list[str], paragraphs: list[str],
        signing: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in marked[:5] + paragraphs[:20]])
    reports = []
    for i in range(2):
        out = tmp_path / f"s{i}.json"
        r = run_cli("scan", data, "-k", key_file, "--field", "text", "--report", out,
                    "--sign", signing)
        assert r.exit_code == 0, r.stderr
        reports.append(read_report(out))
    a, b = reports
    assert _without_run(a) == _without_run(b)
    assert a["signature"]["value"] != b["signature"]["value"] or a["created"] == b["created"]
    assert a["inputs"] == [{"name": str(data), "sha256": a["inputs"][0]["sha256"],
                            "size": data.stat().st_size}]
    assert a["counts"]["records_read"] == 25 and a["test"]["decision"] == "watermarked"
    assert a["options"]["field"] == "text" and "out" not in a["options"]
    assert run_cli("report", "verify", tmp_path / "s0.json", "--public-key",
                   f"{signing}.pub").exit_code == 0


def _secret_forms(spec: WatermarkSpec) -> list[bytes]:
    s = spec.secret
    return [s, s.hex().encode(), s.hex().upper().encode(), base64.b64encode(s),
            base64.urlsafe_b64encode(s).rstrip(b"="), base64.b64encode(s)[:20]]


def test_no_report_holds_the_secret(tmp_path: Path, key_file: Path, spec: WatermarkSpec,
                                    text_file: Path, tokenizer_info: Any) -> None:
    out = tmp_path / "r.json"
    assert run_cli("detect", "-k", key_file, text_file, "--report", out).exit_code in (0, 1)
    data = out.read_bytes()
    for form in _secret_forms(spec):
        assert form not in data
    # a key whose parameters are the secret (transformers' hashing_key): shown as <secret>
    kgw = new_spec("transformers-kgw", {"hashing_key": 987654321987, "vocab_size": 49152},
                   tokenizer_info)
    kgw_file = save_spec(kgw, tmp_path / "kgw.json")
    assert run_cli("detect", "-k", kgw_file, text_file, "--report", out).exit_code in (0, 1)
    data = out.read_bytes()
    assert b"987654321987" not in data and b'"hashing_key":"<secret>"' in data
    for form in _secret_forms(kgw):
        assert form not in data


def test_signing_keys_are_private(tmp_path: Path, signing: Path) -> None:
    assert signing.stat().st_mode & 0o777 == 0o600
    pub = Path(f"{signing}.pub")
    assert pub.stat().st_mode & 0o777 == 0o644
    assert signing.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = run_cli("keygen", "--signing", "--out", signing)
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_report_options_are_checked_first(tmp_path: Path, key_file: Path, text_file: Path,
                                          signing: Path) -> None:
    r = run_cli("detect", "-k", key_file, text_file, "--sign", signing)
    line = "distillmark: error: --sign signs the --report: give --report FILE too\n"
    assert (r.exit_code, r.stderr) == (2, line)
    r = run_cli("detect", "-k", key_file, text_file, text_file, "--report", tmp_path / "r.json")
    assert r.exit_code == 2 and "cover one text" in r.stderr
    r = run_cli("detect", "-k", key_file, text_file, "--report", tmp_path / "r.json",
                "--sign", f"{signing}.pub")
    assert r.exit_code == 2 and "not an unencrypted PEM private key" in r.stderr
    assert not (tmp_path / "r.json").exists() and r.stdout == ""


def test_attribute_report(tmp_path: Path, text_file: Path, signing: Path,
                          tokenizer_info: Any) -> None:
    out = tmp_path / "a.json"
    layered = new_spec("greenlist", {}, tokenizer_info, secret=bytes(range(32)),
                       accounts=AccountLayerParams())
    key_file = save_spec(layered, tmp_path / "layered.json")
    r = run_cli("attribute", "-k", key_file, "--account-space", 8, text_file, "--report", out,
                "--sign", signing)
    assert r.exit_code in (0, 1), r.stderr
    rep = read_report(out)
    assert rep["command"] == "attribute" and rep["inputs"][0]["name"] == str(text_file)
    assert rep["test"]["n_tests"] == 8 and rep["options"]["account_space"] == 8
    assert run_cli("report", "verify", out, "--public-key", f"{signing}.pub").exit_code == 0


def test_read_report_refuses_what_is_not_one(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(InputError, match="not a distillmark report"):
        read_report(bad)
    assert unsigned_bytes({"signature": 1, "a": 2}) == b'{"a":2}'


# --------------------------------------------------------------------------------------------
# probe and audit: the report of a run from cached answers, or of the same model, reproduces


def test_probe_report_reproduces_from_its_cache(tmp_path: Path, key_file: Path,
                                                spec: WatermarkSpec) -> None:
    pytest.importorskip("fastapi")
    from serving_helpers import MODEL_NAME, serving, tiny_generator

    cache = tmp_path / "cache"
    reports = []
    with serving(tiny_generator(seed=4), spec=spec) as url:
        for i in range(2):  # the second run asks nothing: every answer is in the cache
            out = tmp_path / f"p{i}.json"
            r = run_cli("probe", "--endpoint", url, "--model", MODEL_NAME, "-k", key_file,
                        "--n-prompts", 3, "--max-tokens", 24, "--cache", cache,
                        "--report", out)
            assert r.exit_code in (0, 1), r.stderr
            reports.append(read_report(out))
    a, b = reports
    assert a["counts"]["requests"] == 3 and b["counts"]["requests"] == 0
    for rep in (a, b):  # what fetching cost is no part of the test
        rep["result"] = {k: v for k, v in rep["result"].items()
                         if k not in ("n_queries", "n_cached", "n_fetched", "n_retries")}
        rep["counts"].pop("requests")
    assert _without_run(a) == _without_run(b)
    assert a["options"]["endpoint"] == url and a["inputs"][0]["name"] == "prompts asked"
    assert {i["name"].split("/")[-2] for i in a["inputs"][1:]} == {"cache"}


def test_audit_report_reproduces(tmp_path: Path, key_file: Path) -> None:
    pytest.importorskip("torch")
    from serving_helpers import tiny_generator

    model = tmp_path / "model"
    lm = tiny_generator(seed=3)
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    reports = []
    for i in range(2):
        out = tmp_path / f"a{i}.json"
        r = run_cli("audit", "-m", model, "-k", key_file, "--generate", 2, "--context-len", 16,
                    "--top-k", 4, "--report", out)
        assert r.exit_code in (0, 1), r.stderr
        reports.append(read_report(out))
    assert _without_run(reports[0]) == _without_run(reports[1])
    names = {i["name"] for i in reports[0]["inputs"]}
    assert f"{model}/config.json" in names and reports[0]["options"]["generate"] == 2
