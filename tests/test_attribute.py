"""Attribution: answers served under several accounts by a tiny model are named, human text and
other accounts' answers are not (with calibrated p-values), a dataset's harvesting accounts are
found, and the candidate lists are read with one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from serving_helpers import tiny_generator

from distillmark.verify.attribute import Attributor
from distillmark.verify.attribute_dataset import attribute_cells
from distillmark.verify.candidates import Candidates
from distillmark.watermark import InputError, new_spec, scheme_for
from distillmark.watermark.accounts import AccountLayer, AccountLayerParams, AccountMarked
from distillmark.watermark.tokenizer import TokenizerInfo

SECRET = bytes(range(7, 39))
PROMPTS = ["Tell me a story.", "Explain tides.", "Write a poem about bread.",
           "What is a prime number?"]


@pytest.fixture(scope="module")
def master(tokenizer_info: TokenizerInfo):
    return new_spec("greenlist", {}, tokenizer_info, secret=SECRET,
                    accounts=AccountLayerParams())


@pytest.fixture(scope="module")
def served(master):
    """Answers of accounts 3 and 7 (four each) and of account 12, outside the candidates."""
    gen = tiny_generator()
    provider = scheme_for(master)
    layer = AccountLayer(master.secret, master.vocab_size, master.accounts)
    out = {}
    for number in (3, 7, 12):
        outs = gen.generate(PROMPTS, scheme=AccountMarked(provider, layer, number),
                            max_new_tokens=64, temperature=1.0, batch_size=4, seed=number)
        out[number] = [o.text for o in outs]
    return out


def _candidates(n: int = 10) -> Candidates:
    return Candidates.of([(i, f"acct-{i}") for i in range(1, n + 1)], where="test")


def test_each_answer_names_its_account(master, served):
    att = Attributor(master, _candidates())
    for number in (3, 7):
        for text in served[number]:
            r = att.attribute(text, source="answer")
            assert r.candidate == f"acct-{number}" and r.account == f"acct-{number}", r
            assert r.verdict(1e-4) == "attributed"
            assert r.provider_log10_pvalue < -6  # the provider's mark is there too
            d = r.to_dict(1e-4)
            assert d["account"] == f"acct-{number}" and d["source"] == "answer"
            # Bonferroni over the 10 candidates
            assert d["log10_pvalue"] == pytest.approx(min(0.0, r.uncorrected_log10_pvalue + 1))


def test_other_accounts_and_human_text_are_not_attributed(master, served, human_texts):
    att = Attributor(master, _candidates())
    for text in served[12]:  # served to an account that is not a candidate
        r = att.attribute(text)
        assert r.account_at(1e-3) is None, r
        assert r.provider_log10_pvalue < -3  # ours, though no candidate's
    for text in human_texts[:40]:
        r = att.attribute(text[:3000])
        assert r.account_at(1e-3) is None, r
        assert r.verdict(1e-3) in ("not attributed", "insufficient evidence")


def test_account_layer_null_is_uniform_over_keys(tokenizer_info, human_texts):
    """For a fixed candidate, the randomised binomial PIT of its green count on human text is
    uniform, over 20 keys x 60 texts (KS)."""
    u = []
    rng = np.random.default_rng(0)
    for k in range(20):
        spec = new_spec("greenlist", {}, tokenizer_info, secret=bytes([k]) * 32,
                        accounts=AccountLayerParams())
        att = Attributor(spec, Candidates.of([(5, "five")], where="test"))
        seqs = [att.detector.encode(t[:2000]) for t in human_texts[60 * k % 300:][:60]]
        for r in att.attribute_ids(seqs):
            n, c = r.n_scored, r.statistic
            lo, hi = stats.binom.cdf(c - 1, n, 0.25), stats.binom.cdf(c, n, 0.25)
            u.append(lo + rng.random() * (hi - lo))
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_pooled_answers_of_one_account(master, served):
    att = Attributor(master, _candidates())
    one = att.attribute(served[3][0])
    pooled = att.attribute_pooled(served[3])
    assert pooled.account == "acct-3"
    assert pooled.n_scored > one.n_scored and pooled.log10_pvalue < one.log10_pvalue


def test_a_dataset_names_the_accounts_that_harvested_it(master, served, human_texts):
    att = Attributor(master, _candidates(40))
    texts = served[3] + served[7] + [t[:1500] for t in human_texts[:30]]
    seqs = [att.detector.encode(t) for t in texts]
    cells, groups = att.distinct_cells(seqs)
    ds = attribute_cells(att, cells, groups, len(seqs))
    assert {a.account for a in ds.found(1e-3)} == {"acct-3", "acct-7"}
    assert ds.n_records == len(seqs) and ds.n_candidates == 40
    d = ds.to_dict(1e-3)
    assert set(d["accounts_found"]) == {"acct-3", "acct-7"}


def test_a_key_without_account_layer_is_refused(tokenizer_info):
    plain = new_spec("greenlist", {}, tokenizer_info, secret=SECRET)
    with pytest.raises(InputError, match="has no account layer"):
        Attributor(plain, _candidates())


def test_candidate_files(tmp_path: Path):
    lines = tmp_path / "ids.txt"
    lines.write_text("alice\n\nbob\ncarol\n")
    c = Candidates.read(lines)
    assert c.names == ("alice", "bob", "carol") and c.numbers.tolist() == [1, 2, 3]
    numbered = tmp_path / "numbered.txt"
    numbered.write_text("70000 acme\n5 zeta\n")
    c = Candidates.read(numbered)
    assert c.names == ("zeta", "acme") and c.numbers.tolist() == [5, 70000]
    server = tmp_path / "accounts.json"
    server.write_text('{"sk-1": "alice", "sk-2": "bob", "sk-3": "alice"}')
    assert Candidates.read(server).names == ("alice", "bob")
    assert [Candidates.space(3).name(i) for i in range(3)] == ["1", "2", "3"]
    for content, message in [
        ("alice\n5 bob\n", "numbered.txt:2: number every line or none"),
        ("alice\nalice\n", "numbered.txt:2: account 'alice' is listed twice"),
        ("a b c\n", "numbered.txt:1: expected ACCOUNT_ID or NUMBER ACCOUNT_ID, got 'a b c'"),
        ("3 a\n3 b\n", "numbered.txt: number 3 is given to two accounts"),
        ("", "numbered.txt: no candidate accounts"),
    ]:
        numbered.write_text(content)
        with pytest.raises(InputError) as exc:
            Candidates.read(numbered)
        assert str(exc.value).endswith(message), str(exc.value)


def _run(*args: object):
    from typer.testing import CliRunner

    from distillmark.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_attribute_command(tmp_path: Path, master, served, human_texts):
    import json

    from distillmark.watermark import save_spec
    from distillmark.watermark.serve.log import RequestLog

    key = save_spec(master, tmp_path / "k.json")
    ids = tmp_path / "accounts.txt"
    ids.write_text("".join(f"acct-{i}\n" for i in range(1, 11)))
    answer = tmp_path / "answer.txt"
    answer.write_text(served[7][0])
    log = RequestLog(tmp_path / "requests.jsonl")
    log.record(request_id="r", account="acct-7", number=7, key_id=master.key_id, model="m",
               messages=[{"role": "user", "content": "q"}], answers=[served[7][0]], usage={})
    log.close()
    r = _run("attribute", "--key", key, "--accounts", ids, "--log", tmp_path / "requests.jsonl",
             "--alpha", "1e-4", answer)
    assert r.exit_code == 0, r.output
    assert f"{answer}: attributed to acct-7 (p = " in r.stdout
    assert "in the request log" in r.stdout

    data = tmp_path / "leak.jsonl"
    rows = served[3] + [t[:1500] for t in human_texts[:12]]
    data.write_text("".join(json.dumps({"response": t}) + "\n" for t in rows)
                    + "not json\n")
    r = _run("attribute", "--key", key, "--accounts", ids, "--field", "response", "--json",
             "--skip-bad", "--alpha", "1e-4", data)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    per, summary = lines[:-1], lines[-1]
    assert len(per) == len(rows) and summary["summary"] is True
    assert {d["account"] for d in per[:4]} == {"acct-3"}
    assert all(d["account"] is None for d in per[4:])
    assert set(per[0]) >= {"source", "statistic", "pvalue", "n_scored", "verdict", "account"}
    assert summary["accounts_found"] == ["acct-3"] and summary["n_skipped"] == 1
    assert f"skipped {data}:{len(rows) + 1}:" in r.stderr

    out = tmp_path / "per-record.jsonl"
    r = _run("attribute", "--key", key, "--account-space", 10, "--field", "response",
             "--skip-bad", "--out", out, data)
    assert r.exit_code == 0 and len(out.read_text().splitlines()) == len(rows)
    assert "dataset: 3 found" in r.stdout

    human = tmp_path / "human.txt"
    human.write_text(human_texts[0])
    r = _run("attribute", "--key", key, "--account-space", 10, human)
    assert r.exit_code == 1 and "not attributed" in r.stdout


def test_attribute_with_a_ring_tries_every_key(tmp_path: Path, master, served, human_texts,
                                               tokenizer_info):
    """Answers served under a key since retired are still named through the ring, the p-value
    corrected for the ring's keys on top of the candidates; a key of the ring without an account
    layer names no account and is not counted."""
    import json

    from distillmark.watermark.ring import KeyRing, save_ring

    successor = new_spec("greenlist", {}, tokenizer_info, secret=bytes(range(9, 41)),
                         accounts=AccountLayerParams())
    plain = new_spec("greenlist", {}, tokenizer_info, secret=bytes(range(11, 43)))
    ring = save_ring(KeyRing.first(master).add(plain).add(successor), tmp_path / "ring.json")
    answer = tmp_path / "answer.txt"
    answer.write_text(served[7][0])
    r = _run("attribute", "--key", ring, "--account-space", 10, "--json", "--alpha", "1e-4",
             answer)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout.splitlines()[0])
    assert d["account"] == "7" and d["key_id"] == master.key_id and d["n_keys"] == 2
    single = Attributor(master, Candidates.space(10)).attribute(served[7][0])
    assert d["log10_pvalue"] == pytest.approx(min(0.0, single.log10_pvalue + np.log10(2)))
    human = _run("attribute", "--key", ring, "--account-space", 10, "--alpha", "1e-4", answer)
    assert f"p corrected for 10 accounts and 2 keys (best: {master.key_id})" in human.stdout

    data = tmp_path / "leak.jsonl"
    rows = served[3] + [t[:1500] for t in human_texts[:8]]
    data.write_text("".join(json.dumps({"response": t}) + "\n" for t in rows))
    r = _run("attribute", "--key", ring, "--account-space", 10, "--field", "response",
             "--json", "--alpha", "1e-4", data)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["n_keys"] == 2 and summary["accounts_found"] == ["3"]
    found = summary["accounts"][0]
    assert found["key_id"] == master.key_id and found["account"] == "3"


def test_attribute_errors_are_one_line(tmp_path: Path, tokenizer_info):
    from distillmark.watermark import save_spec

    plain = save_spec(new_spec("greenlist", {}, tokenizer_info), tmp_path / "plain.json")
    text = tmp_path / "t.txt"
    text.write_text("some text")
    for args, message in [
        (("--key", plain, text), ("give the candidate accounts: --accounts FILE or "
                                  "--account-space N")),
        (("--key", plain, "--account-space", 5, text), "has no account layer"),
        (("--key", plain, "--accounts", tmp_path / "none.txt", text), "does not exist"),
        (("--key", plain, "--account-space", 5, "--out", tmp_path / "no" / "o.jsonl", text),
         (f"cannot write --out {tmp_path / 'no' / 'o.jsonl'}: folder {tmp_path / 'no'} does "
         "not exist")),
    ]:
        r = _run("attribute", *args)
        assert r.exit_code == 2, r.output
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_scan_with_accounts(tmp_path: Path, master, served, human_texts):
    import json

    from distillmark.verify.scan import scan
    from distillmark.watermark import save_spec

    data = tmp_path / "leak.jsonl"
    rows = served[7] + [t[:1500] for t in human_texts[:8]] + served[3]
    data.write_text("".join(json.dumps({"response": t}) + "\n" for t in rows))
    out = tmp_path / "rows.jsonl"
    res = scan([data], [master], field="response", out=out, alpha=1e-4,
               accounts=_candidates())
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d["account"] for d in lines] == ["acct-7"] * 4 + [None] * 8 + ["acct-3"] * 4
    assert all(d["account_log10_pvalue"] <= 0 for d in lines)
    assert {a.account for a in res.accounts.found(1e-4)} == {"acct-3", "acct-7"}
    assert res.to_dict(1e-4)["accounts"]["n_records"] == len(rows)
    key = save_spec(master, tmp_path / "k.json")
    r = _run("scan", "--key", key, "--field", "response", "--account-space", 10,
             "--alpha", "1e-4", data)
    assert r.exit_code == 0, r.output
    assert "accounts: 2 found among 10; " in r.stdout
    r = _run("scan", "--key", key, "--field", "response", "--account-space", 10,
             "--engine", "dask", data)
    assert r.exit_code == 2 and "--accounts works with the local engine" in r.stderr
