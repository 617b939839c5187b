"""What the verification commands share to write ``--report`` (canonical JSON, optionally
signed with ``--sign``) and ``--html``: checked before the work starts, written after it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillmark.verify.report import new_report, pvalue_string, write_report
from distillmark.watermark import InputError, WatermarkSpec
from distillmark.watermark.files import check_writable

#: Options that change no figure of a result (outputs, display, resources): left out of
#: ``options``.
NOT_RESULT_OPTIONS = frozenset({
    "report", "sign", "html", "as_json", "out", "rejects", "resume", "state_dir", "engine",
    "scheduler", "workers", "shard_mb", "cache", "concurrency", "timeout", "retries",
    "backoff", "api_key_env", "batch_size", "device", "max_bytes", "key", "files", "inputs",
    "tokenizer",
})


@dataclass
class ReportPlan:
    """``--report``/``--sign``/``--html`` as given, checked: the signing key is loaded and the
    outputs' folders are checked before any work, so a typo costs nothing."""

    report: Path | None
    html: Path | None
    signing_key: Any

    @classmethod
    def check(cls, report: Path | None, sign: Path | None, html: Path | None = None
              ) -> ReportPlan:
        if sign is not None and report is None:
            raise InputError("--sign signs the --report: give --report FILE too")
        for opt, path in (("--report", report), ("--html", html)):
            if path is not None:
                check_writable(path, what=f"{opt} {path}")
        key = None
        if sign is not None:
            from distillmark.verify.signing import load_private_key

            key = load_private_key(sign)
        return cls(report=report, html=html, signing_key=key)

    @property
    def wanted(self) -> bool:
        return self.report is not None or self.html is not None

    def write(self, report: Mapping[str, Any]) -> None:
        """Sign (with ``--sign``) and write the report, then its HTML view (``--html``)."""
        if self.signing_key is not None:
            from distillmark.verify.signing import sign_report

            report = sign_report(report, self.signing_key)
        if self.report is not None:
            write_report(self.report, report)
        if self.html is not None:
            from distillmark.verify.report_html import write_html

            write_html(self.html, report)


def result_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The command's own options that change its result, from its parameters (paths as
    strings)."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in NOT_RESULT_OPTIONS or not isinstance(value, _PLAIN):
            continue  # (a command's locals may hold what it imported)
        if isinstance(value, (list, tuple)):
            out[name] = [str(v) if isinstance(v, Path) else v for v in value]
        else:
            out[name] = str(value) if isinstance(value, Path) else value
    return out


_PLAIN = (type(None), bool, int, float, str, Path, list, tuple)


def key_fields(specs: Sequence[WatermarkSpec]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The keys' public fields (never the secret) and the tokenizer they are bound to."""
    return [s.public_dict() for s in specs], specs[0].tokenizer.to_dict()


def test_fields(d: Mapping[str, Any], alpha: float, *, name: str | None = None,
                decision: str | None = None) -> dict[str, Any]:
    """The ``test`` member from a result's ``to_dict(alpha)``."""
    n_tests = int(d.get("n_keys", 1))
    return {"name": name or str(d.get("test", "")), "statistic": d.get("statistic"),
            "pvalue": pvalue_string(float(d["pvalue"]), float(d["log10_pvalue"])),
            "log10_pvalue": float(d["log10_pvalue"]), "alpha": alpha,
            "decision": decision or str(d.get("verdict", "")), "n_tests": n_tests,
            "correction": "bonferroni" if n_tests > 1 else "none"}


def counts_of(d: Mapping[str, Any], **extra: int) -> dict[str, int]:
    """The ``counts`` member: tokens, scored, repeated and skipped, from a result's dict."""
    out = {"tokens": int(d.get("n_tokens", 0)), "scored": int(d.get("n_scored", 0)),
           "repeated": int(d.get("n_repeated", 0)), "skipped": 0}
    out.update(extra)
    return out


def build(command: str, *, inputs: Sequence[Mapping[str, Any]], specs: Sequence[WatermarkSpec],
          params: Mapping[str, Any], result: Mapping[str, Any], alpha: float,
          counts: Mapping[str, int], controls: Sequence[Mapping[str, Any]],
          test: Mapping[str, Any] | None = None, details: Mapping[str, Any] | None = None
          ) -> dict[str, Any]:
    """A report of ``command`` (see :func:`distillmark.verify.report.new_report`)."""
    keys, tok = key_fields(specs)
    return new_report(command, inputs=inputs, keys=keys, tokenizer=tok,
                      options=result_options(params), counts=counts,
                      test=test or test_fields(result, alpha), controls=controls,
                      result=result, details=details)
