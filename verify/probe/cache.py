"""The answers of a probe on disk, one JSON file per answer, so that an interrupted probe
resumes without paying for any query twice.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from distillmark.watermark.errors import InputError
from distillmark.watermark.files import atomic_write, read_json

__all__ = ["ResponseCache"]

_CACHE_VERSION = 1


class ResponseCache:
    """Answers on disk, one JSON file per (endpoint, model, prompt, sample index, sampling,
    API key).

    Each file is written to a temporary name and renamed, so a probe killed at any moment
    leaves either a whole answer or none. The API key enters only the file name's hash (answers
    differ between accounts); it is never written.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(f"--cache {self.directory} is not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create cache directory {self.directory}: "
                             f"{exc.strerror}") from None

    @staticmethod
    def key(url: str, model: str, prompt: str, params: dict[str, Any],
            api_key: str | None) -> str:
        who = hashlib.sha256(api_key.encode("utf-8")).hexdigest() if api_key else ""
        material = json.dumps([_CACHE_VERSION, url, model, prompt, params, who],
                              sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            rec = read_json(path)
        except InputError:
            if not path.exists():
                return None
            warnings.warn(f"cache file {path} is unreadable; asking again", stacklevel=2)
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("answer"), str):
            warnings.warn(f"cache file {path} is not an answer record; asking again",
                          stacklevel=2)
            return None
        return rec

    def put(self, key: str, record: dict[str, Any]) -> None:
        with atomic_write(self._path(key), mode=0o600) as fh:
            json.dump(record, fh, ensure_ascii=False)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))
