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
    assert Candidates.space(3).names == ("1", "2", "3")
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
