"""Write the cross-engine conformance vectors (greenlist.json, dipmark.json) from the numpy
reference.

Run only when a scheme's definition changes on purpose:
``python tests/vectors/make_vectors.py``. Every engine adapter is tested against the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

SECRET = bytes(range(32))
#: Green-list cases. ``n_lists`` is stated in each (256: keygen's default when they were
#: recorded): a change of the defaults must not change the vectors. "default" names the other
#: parameters' defaults.
CASES = {
    "default": {"n_lists": 256},
    "unigram": {"context_width": 0, "n_lists": 256},
    "h2-hash": {"context_width": 2, "n_lists": 256},
    "h3-min": {"context_width": 3, "combine": "min", "n_lists": 256},
    "h4-hash-64lists": {"context_width": 4, "n_lists": 64, "delta": 1.5},
    "selfhash-h3-min": {"context_width": 3, "seeding": "selfhash", "combine": "min",
                        "n_lists": 256},
}
DIPMARK_CASES = {
    "default": {},
    "h0-alpha0.5": {"context_width": 0, "alpha": 0.5},
    "h3-min-64lists": {"context_width": 3, "combine": "min", "n_lists": 64, "gamma": 0.25},
}
#: (temperature, top_p) of each DiPmark step, by context index.
DIPMARK_SAMPLING = [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9), (1.3, 0.95)]
CONTEXTS = [[1, 2, 3, 4, 5], [49151, 0, 17, 17, 17], [9707, 28, 260, 1012, 3211],
            [31, 31, 31, 31, 31]]


def logits_for(case: int, vocab: int) -> np.ndarray:
    """Deterministic float32 logits ``(vocab,)`` for a case (no RNG involved)."""
    i = np.arange(vocab, dtype=np.float64)
    return (4.0 * np.sin(0.37 * i + 1.3 * case) + 0.001 * (i % 97)).astype(np.float32)


def mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(mask.astype(bool)).tobytes()).hexdigest()


def main() -> None:
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    out = {"secret_hex": SECRET.hex(), "tokenizer_sha256": info.sha256, "cases": []}
    for name, params in CASES.items():
        spec = new_spec("greenlist", params, info, secret=SECRET)
        scheme = scheme_for(spec)
        rows = []
        for c, ctx in enumerate(CONTEXTS):
            logits = logits_for(c, info.vocab_size)
            biased = scheme.bias(logits[None, :], np.array([ctx]))[0]
            bump = biased != logits
            rows.append({"context": ctx, "logits_case": c, "n_biased": int(bump.sum()),
                         "biased_sha256": mask_digest(bump),
                         "first_biased": np.flatnonzero(bump)[:16].tolist(),
                         "biased_logits_sha256": hashlib.sha256(biased.tobytes()).hexdigest()})
        ids = np.array([c for ctx in CONTEXTS for c in ctx])
        out["cases"].append({"name": name, "params": spec.params, "key_id": spec.key_id,
                             "steps": rows, "ids": ids.tolist(),
                             "green_indicators": scheme.green_indicators(ids).astype(int).tolist()})
    path = Path(__file__).with_name("greenlist.json")
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    write_dipmark(info)


def dipmark_step(out: np.ndarray) -> dict[str, object]:
    """What a DiPmark step must reproduce: ``out (V,)`` its log-probabilities -> the tokens of
    probability 0 (count and digest, exact) and the 8 most likely tokens with probabilities
    (compared to 1e-6: exp and log may round differently on other machines)."""
    zero = np.isneginf(out)
    top = np.argsort(-out, kind="stable")[:8]
    return {"n_zero": int(zero.sum()), "zero_sha256": mask_digest(zero),
            "top_tokens": top.tolist(),
            "top_probs": [float(x) for x in np.exp(out[top].astype(np.float64))]}


def write_dipmark(info: object) -> None:
    out: dict[str, object] = {"secret_hex": SECRET.hex(),
                              "tokenizer_sha256": info.sha256,  # type: ignore[attr-defined]
                              "cases": []}
    cases: list[dict[str, object]] = []
    for name, params in DIPMARK_CASES.items():
        spec = new_spec("dipmark", params, info, secret=SECRET)  # type: ignore[arg-type]
        scheme = scheme_for(spec)
        rows = []
        for c, ctx in enumerate(CONTEXTS):
            temperature, top_p = DIPMARK_SAMPLING[c]
            logits = logits_for(c, info.vocab_size)  # type: ignore[attr-defined]
            res = scheme.process(logits[None, :], np.array([ctx]), prompt_width=2,
                                 temperature=temperature, top_p=top_p)[0]
            rows.append({"context": ctx, "logits_case": c, "temperature": temperature,
                         "top_p": top_p, **dipmark_step(res)})
        ids = np.array([c for ctx in CONTEXTS for c in ctx])
        green = scheme.key_scores(scheme.tuple_keys(ids))
        cases.append({"name": name, "params": spec.params, "key_id": spec.key_id,
                      "steps": rows, "ids": ids.tolist(),
                      "green_indicators": green.astype(int).tolist()})
    out["cases"] = cases
    path = Path(__file__).with_name("dipmark.json")
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
