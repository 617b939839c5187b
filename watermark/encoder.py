"""Text to token ids: the one way every verifier encodes text.

:class:`TextEncoder` wraps a ``tokenizers`` tokenizer and gives the same ids, faster, where
the tokenizer's own definition allows an exact rank-based encoder (``tiktoken``): a byte-level
BPE with the GPT-2 split pattern, no normaliser, merges whose order is the order of the ids
they make, and added tokens that ``tiktoken`` splits out the way ``tokenizers`` does. Anything
else — another model type, a normaliser, a byte fallback, added tokens with strip or
single-word flags, ``tiktoken`` missing, a self-test that disagrees — falls back to
``tokenizers`` silently. Identity is the contract: the same ids as ``tokenizers`` on every input.

Texts holding a character the rank table cannot encode byte by byte (a byte absent from the
vocabulary: ``tokenizers`` drops it), a lone surrogate, or a character whose Unicode category
may differ between the two regex engines' tables (unassigned in this Python's Unicode
database) are encoded by ``tokenizers`` itself, one text at a time.

``DISTILLMARK_SLOW_TOKENIZER=1`` in the environment (read at every call) or ``fast=False``
forces the ``tokenizers`` path: for comparisons and benchmarks.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["FAST_MIN_CHARS", "SLOW_ENV", "TextEncoder"]

#: Environment variable that, set to a non-empty value other than ``0``, forces ``tokenizers``.
SLOW_ENV = "DISTILLMARK_SLOW_TOKENIZER"
#: The rank-based encoder is built (once, about half a second) when one call brings this much
#: text; smaller calls before that use ``tokenizers``, whose ids are the same.
FAST_MIN_CHARS = 1 << 18

# the GPT-2 split pattern of tokenizers' ByteLevel pre-tokenizer (use_regex)
_GPT2_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
                 r"|\s+(?!\S)|\s+")
# joins texts of one batch: a special token of its own, never in a text sent to tiktoken
_SEP = "\ufdd0"
# below this many characters a batch is not worth splitting across threads
_THREAD_MIN_CHARS = 1 << 16
_SELF_TEST = [
    "Hello, world! It's a test: we'll see; they've 'quoted' it.",
    "  leading spaces\n\n\ttabs\t\there \r\nCRLF\r\n\r\n   trailing   ",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "x<filename>y.py<file_sep>z <repo_name>a<reponame>b<|endoftext|>",
    "ünïcödé — 日本語のテキスト 한국어 العربية עברית Ελληνικά русский हिन्दी ไทย",
    "emoji 👍🏽 👨‍👩‍👧 🇫🇷 ✨✨✨ and symbols ∑∫√ ©®™ €£¥",
    "numbers 1234567890 3.14159 1e-10 0x1F 1,000,000 ١٢٣ ½",
    "def f(x):\n    return {'a': x ** 2, \"b\": [1, 2, 3]}  # comment\n",
    "a" * 300 + " " + "ab" * 200 + " " + "!" * 100 + " " * 50 + "z",
    "\u00a0nbsp\u2003em\u3000ideographic\u2028line\u2029para\u0085nel\u200bzwsp end",
]


@dataclass(frozen=True)
class _FastBPE:
    """The rank-based encoder of one tokenizer and what it may be trusted with."""

    encoding: Any  # tiktoken.Encoding
    sep_id: int
    refused: np.ndarray  # (0x110000,) bool: a text with one of these goes to tokenizers
    specials: frozenset[str]

    def refused_at(self, texts: list[str]) -> list[int]:
        """Indices of the texts holding a refused character."""
        joined = "\n".join(texts)
        if joined.isascii():
            codes: np.ndarray = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        else:
            codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        hits = np.flatnonzero(self.refused[codes])
        if not hits.size:
            return []
        starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
        return np.unique(np.searchsorted(starts, hits, side="right") - 1).tolist()


def _force_slow() -> bool:
    return os.environ.get(SLOW_ENV, "") not in ("", "0")


def _bytes_to_unicode() -> dict[str, int]:
    """The byte-level alphabet: the character standing for each byte in the vocabulary."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _is_byte_level(step: Any) -> bool:
    return (isinstance(step, dict) and step.get("type") == "ByteLevel"
            and step.get("use_regex", True) and not step.get("add_prefix_space", False))


def _only(step: Any) -> Any:
    """A one-step ``Sequence`` as its step."""
    if isinstance(step, dict) and step.get("type") == "Sequence":
        inner = step.get("pretokenizers", step.get("normalizers", step.get("processors")))
        if isinstance(inner, list) and len(inner) == 1:
            return inner[0]
        if isinstance(inner, list) and not inner:
            return None
    return step


_NEUTRAL_POST = {"ByteLevel", "TemplateProcessing", "RobertaProcessing", "BertProcessing"}


def _post_is_neutral(post: Any) -> bool:
    """Post-processors that add nothing without ``add_special_tokens``."""
    if post is None:
        return True
    if post.get("type") == "Sequence":
        return all(_post_is_neutral(p) for p in post.get("processors", []))
    return post.get("type") in _NEUTRAL_POST


def _ranks(cfg: dict[str, Any]) -> tuple[dict[bytes, int], dict[str, int]] | str:
    """The rank table and the added tokens of a byte-level BPE, or why it has none."""
    model = cfg.get("model") or {}
    if model.get("type") != "BPE":
        return f"model type {model.get('type')!r} is not BPE"
    if model.get("dropout") or model.get("byte_fallback"):
        return "BPE with dropout or byte fallback"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "BPE with subword prefixes or suffixes"
    if _only(cfg.get("normalizer")) is not None:
        return "a normaliser"
    if not _is_byte_level(_only(cfg.get("pre_tokenizer"))):
        return "the pre-tokenizer is not ByteLevel with the GPT-2 pattern and no prefix space"
    dec = cfg.get("decoder")
    if dec is not None and _only(dec).get("type") != "ByteLevel":
        return "the decoder is not ByteLevel"
    if cfg.get("truncation") or cfg.get("padding") or not _post_is_neutral(cfg.get("post_processor")):
        return "truncation, padding or a post-processor that changes ids"
    added: dict[str, int] = {}
    normalized = set()
    for a in cfg.get("added_tokens") or []:
        if a.get("single_word") or a.get("lstrip") or a.get("rstrip") or not a.get("content"):
            return f"added token {a.get('content')!r} has strip or single-word flags"
        added[a["content"]] = int(a["id"])
        normalized.add(bool(a.get("normalized")))
    if len(normalized) > 1:
        return "added tokens both normalised and not"
    names = sorted(added)
    if any(b.startswith(a) for a, b in pairwise(names)):
        return "an added token is the start of another"
    byte_of = str.maketrans({ch: chr(b) for ch, b in _bytes_to_unicode().items()})
    vocab: dict[str, int] = model.get("vocab") or {}
    try:
        ranks = {tok.translate(byte_of).encode("latin-1"): int(i)
                 for tok, i in vocab.items() if tok not in added}
    except UnicodeEncodeError:
        return "a vocabulary entry is not in the byte-level alphabet"
    prev, made = -1, set()
    for m in model.get("merges") or []:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        made_id = vocab.get(a + b)
        if made_id is None or a not in vocab or b not in vocab or made_id <= prev:
            return "merges whose order is not the order of the ids they make"
        prev = made_id
        made.add(made_id)
    singles = sum(1 for k in ranks if len(k) == 1)
    if len(made - set(added.values())) != len(ranks) - singles:
        return "vocabulary entries no merge makes"
    if any(bytes([b]) not in ranks for b in range(0x80, 0xC0)):
        return "a UTF-8 continuation byte is missing from the vocabulary"
    return ranks, added


@lru_cache(maxsize=1)
def _unassigned() -> np.ndarray:
    """``(0x110000,) bool``: code points unassigned in this Python's Unicode database. Planes
    4-13 count as unassigned whole (they are; refusing more only costs speed) and planes 15-16
    are private use but for their last two code points."""
    table = np.ones(0x110000, dtype=bool)
    for lo, hi in ((0, 0x40000), (0xE0000, 0xF0000)):
        cps = np.arange(lo, hi, dtype=np.uint32)
        cps[(cps >= 0xD800) & (cps < 0xE000)] = 0  # surrogates cannot be decoded
        chars = cps.astype("<u4").tobytes().decode("utf-32-le")
        table[lo:hi] = np.fromiter(map("Cn".__eq__, map(unicodedata.category, chars)),
                                   dtype=bool, count=len(chars))
    table[0xF0000:] = False
    table[[0xFFFFE, 0xFFFFF, 0x10FFFE, 0x10FFFF]] = True
    return table


def _refused_table(ranks: dict[bytes, int]) -> np.ndarray:
    """``(0x110000,) bool``: characters sent to tokenizers: lone surrogates, the batch
    separator, characters with a byte the vocabulary lacks, and code points unassigned in this
    Python's Unicode database (the two regex engines' tables may classify them differently)."""
    table = _unassigned().copy()
    table[0xD800:0xE000] = True
    table[ord(_SEP)] = True
    for b in range(256):
        if bytes([b]) in ranks:
            continue
        if b < 0x80:
            table[b] = True
        elif 0xC2 <= b <= 0xDF:
            table[(b - 0xC0) << 6:((b - 0xC0) << 6) + 0x40] = True
        elif 0xE0 <= b <= 0xEF:
            table[(b - 0xE0) << 12:((b - 0xE0) << 12) + 0x1000] = True
        elif 0xF0 <= b <= 0xF4:
            table[(b - 0xF0) << 18:((b - 0xF0) << 18) + 0x40000] = True
    return table


def build_fast(tokenizer: Tokenizer, tokenizer_json: str) -> tuple[_FastBPE | None, str]:
    """The rank-based encoder of ``tokenizer`` (whose definition is ``tokenizer_json``), or
    None and the reason there is none."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    try:
        cfg = json.loads(tokenizer_json)
    except ValueError:
        return None, "unreadable tokenizer.json"
    got = _ranks(cfg)
    if isinstance(got, str):
        return None, got
    ranks, added = got
    sep_id = max(chain(ranks.values(), added.values())) + 1
    try:
        enc = tiktoken.Encoding("distillmark", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks,
                                special_tokens={**added, _SEP: sep_id})
    except Exception as exc:  # noqa: BLE001 - any refusal means: use tokenizers
        return None, f"tiktoken refused the ranks: {exc}"
    fast = _FastBPE(enc, sep_id, _refused_table(ranks), frozenset(added) | {_SEP})
    tests = _SELF_TEST + ["".join(added)]
    want = [e.ids for e in tokenizer.encode_batch(tests, add_special_tokens=False)]
    if fast.refused_at(tests):
        return None, "the self-test holds characters the fast path refuses"
    try:
        got_ids = [_encode_one(fast, t).tolist() for t in tests]
    except BaseException as exc:  # tiktoken's Rust panics are BaseExceptions
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return None, f"the self-test failed in tiktoken: {type(exc).__name__}"
    if got_ids != want:
        return None, "the self-test's ids differ from tokenizers'"
    return fast, ""


def _encode_one(fast: _FastBPE, text: str) -> np.ndarray:
    return fast.encoding.encode_to_numpy(text, allowed_special=fast.specials,
                                         disallowed_special=())


def _threads() -> int:
    """Threads of a large batch: as ``tokenizers`` would use (``RAYON_NUM_THREADS``, one with
    ``TOKENIZERS_PARALLELISM=false``), at most 8."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off", "no"):
        return 1
    env = os.environ.get("RAYON_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return min(8, int(env))
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else (os.cpu_count() or 1))
    return max(1, min(8, cores))


class TextEncoder:
    """Token ids of texts, exactly as ``tokenizer`` gives them (no special tokens added).

    Args:
        tokenizer: the ``tokenizers`` tokenizer (the reference).
        tokenizer_json: its definition, from which the fast path is built.
        fast: False forces ``tokenizers`` (so does ``DISTILLMARK_SLOW_TOKENIZER=1``).
    """

    def __init__(self, tokenizer: Tokenizer, tokenizer_json: str | None, *,
                 fast: bool = True) -> None:
        self.tokenizer = tokenizer
        self._json = tokenizer_json if fast else None
        self._fast: _FastBPE | None = None
        self.reason = "not built yet" if self._json is not None else "forced off"
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    @property
    def is_fast(self) -> bool:
        """Whether the rank-based encoder is built and in use."""
        return self._fast is not None

    def prepare(self) -> bool:
        """Build the fast path now (else it is built on the first large call); whether it is
        in use."""
        if self._json is not None:
            self._fast, self.reason = build_fast(self.tokenizer, self._json)
            self._json = None
        return self._fast is not None

    def _slow(self, texts: list[str], where: list[int] | None = None) -> list[list[int]]:
        """tokenizers' ids of ``texts`` (``where``: their indices in the caller's batch)."""
        try:
            return [e.ids for e in self.tokenizer.encode_batch_fast(texts,
                                                                   add_special_tokens=False)]
        except TypeError:
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)
                        or _has_surrogate(t)), None)
            if bad is None:
                raise
            raise InputError(f"text {bad if where is None else where[bad]} is not a str of valid Unicode (a lone surrogate or "
                             f"another type); decode bytes as UTF-8 first") from None

    def encode(self, text: str) -> np.ndarray:
        """``(n,) int64`` ids of one text."""
        ids, _ = self.encode_batch([text])
        return ids

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of ``texts`` end to end, ``(N,) int64``, and each text's count, ``(len,) int64``."""
        texts = list(texts)
        if self._json is not None and sum(map(len, texts)) >= FAST_MIN_CHARS:
            self.prepare()
        fast = self._fast
        if fast is None or not texts or _force_slow():
            return _flatten(self._slow(texts))
        if not all(isinstance(t, str) for t in texts):
            return _flatten(self._slow(texts))
        slow_idx = fast.refused_at(texts)
        if len(slow_idx) == len(texts):
            return _flatten(self._slow(texts))
        skip = set(slow_idx)
        fast_texts = texts if not skip else [t for i, t in enumerate(texts) if i not in skip]
        ids, lens = self._fast_batch(fast, fast_texts)
        if not slow_idx:
            return ids, lens
        slow = self._slow([texts[i] for i in slow_idx], slow_idx)
        return _merge(texts, slow_idx, ids, lens, slow)

    def encode_lists(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text, ``(n_i,) int64`` each."""
        ids, lens = self.encode_batch(texts)
        return np.split(ids, np.cumsum(lens)[:-1]) if lens.size else []

    def _fast_batch(self, fast: _FastBPE, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        total = sum(map(len, texts))
        n = _threads() if total >= _THREAD_MIN_CHARS else 1
        if n == 1:
            arrays = [_encode_one(fast, _SEP.join(texts))]
        else:
            bounds, acc, step = [0], 0, total / n
            for i, t in enumerate(texts):
                acc += len(t) + 1
                if acc >= step * len(bounds) and len(bounds) < n:
                    bounds.append(i + 1)
            bounds.append(len(texts))
            parts = [_SEP.join(texts[a:b]) for a, b in pairwise(bounds) if b > a]
            if self._pool is None or self._pool[0] != os.getpid():  # none yet, or forked
                self._pool = (os.getpid(), ThreadPoolExecutor(max_workers=n))
            arrays = list(self._pool[1].map(lambda s: _encode_one(fast, s), parts))
            # a part boundary is a text boundary too
            arrays = list(chain.from_iterable(
                (a, np.asarray([fast.sep_id], dtype=np.uint32)) for a in arrays))[:-1]
        arr = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        is_sep = arr == fast.sep_id
        seps = np.flatnonzero(is_sep)
        ends = np.append(seps, arr.size)
        lens = np.diff(np.concatenate([[-1], ends])) - 1
        return arr[~is_sep].astype(np.int64), lens.astype(np.int64)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _flatten(id_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(lens.sum()))
    return ids, lens


def _merge(texts: list[str], slow_idx: list[int], ids: np.ndarray, lens: np.ndarray,
           slow: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The fast texts' ids and the slow texts' ids back in the texts' order."""
    fast_seqs = iter(np.split(ids, np.cumsum(lens)[:-1]) if lens.size else [])
    slow_of = dict(zip(slow_idx, slow))
    seqs = [np.asarray(slow_of[i], dtype=np.int64) if i in slow_of else next(fast_seqs)
            for i in range(len(texts))]
    out_lens = np.fromiter((s.size for s in seqs), dtype=np.int64, count=len(seqs))
    return (np.concatenate(seqs) if seqs else np.zeros(0, np.int64)), out_lens

