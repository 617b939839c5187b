"""Prompts for querying models: a built-in varied set, and prompt files.

The built-in set crosses instruction templates with topics from many fields, so the answers
cover varied vocabulary (a probe scores distinct tuples: varied answers give more of them than
many answers on one theme). It is fixed and ordered: ``builtin_prompts(n)`` is the same list on
every machine, and its first ``n`` entries are a stable prefix.
"""

from __future__ import annotations

from pathlib import Path

from distillmark.watermark.errors import InputError

from .textfiles import json_line, read_input, text_line

__all__ = ["TEMPLATES", "TOPICS", "builtin_prompts", "prompts_from_log", "read_prompts"]

TEMPLATES: tuple[str, ...] = (
    "Explain {t} to a curious teenager.",
    "Write a short paragraph about {t}.",
    "What are the most common misconceptions about {t}?",
    "Give three practical tips related to {t}.",
    "Summarise the history of {t} in a few sentences.",
    "Write a short story in which {t} plays a central role.",
    "What would an expert want a beginner to know about {t}?",
    "Compare {t} with something from everyday life.",
    "List the pros and cons of {t}.",
    "Write a friendly email to a colleague about {t}.",
    "Describe how {t} might change over the next twenty years.",
    "Write a poem about {t}.",
    "What questions should I ask before learning about {t}?",
    "Explain the key ideas behind {t} step by step.",
    "Write a product description inspired by {t}.",
    "How would you teach {t} to a ten-year-old?",
    "Write a dialogue between two friends discussing {t}.",
    "What are the ethical questions raised by {t}?",
    "Give an example that illustrates {t}.",
    "Write a news-style headline and short article about {t}.",
)

TOPICS: tuple[str, ...] = (
    "ocean tides", "photosynthesis", "the water cycle", "volcanoes", "black holes",
    "vaccines", "the immune system", "sleep", "coffee", "bread baking", "composting",
    "beekeeping", "urban gardening", "climate change", "renewable energy", "electric cars",
    "bicycles", "railways", "the printing press", "the Roman Empire", "ancient Egypt",
    "the Renaissance", "jazz music", "learning a second language", "chess", "marathon running",
    "yoga", "meditation", "personal budgeting", "compound interest", "inflation",
    "small businesses", "remote work", "job interviews", "public speaking", "friendship",
    "moving to a new city", "pets", "dogs", "cats", "birds migrating", "coral reefs",
    "rainforests", "deserts", "mountains", "recycling plastic", "clean drinking water",
    "the internet", "computer programming", "databases", "cybersecurity", "passwords",
    "artificial intelligence", "robots", "space exploration", "the Moon", "Mars", "telescopes",
    "earthquakes", "weather forecasting", "rainbows", "music theory", "painting",
    "photography", "film making", "libraries", "museums", "board games", "video games",
    "cooking pasta", "spices", "tea", "nutrition", "first aid", "hiking safety", "camping",
    "ancient philosophy", "democracy", "the scientific method", "statistics", "prime numbers",
    "geometry", "probability", "maps and navigation", "the history of writing", "architecture",
    "bridges", "skyscrapers", "recycling electronics", "fashion", "handwriting", "kindness",
)


def builtin_prompts(n: int | None = None) -> list[str]:
    """The built-in prompt set (``len(TEMPLATES) * len(TOPICS)`` prompts), or its first ``n``.

    Ordered topic-major within each template sweep, so any prefix mixes templates and topics.
    """
    out: list[str] = []
    n_t = len(TEMPLATES)
    for i in range(n_t * len(TOPICS)):
        # Walk templates fastest and shift the topic each round: consecutive prompts differ
        # in both template and topic.
        template = TEMPLATES[i % n_t]
        topic = TOPICS[(i // n_t + i) % len(TOPICS)]
        out.append(template.format(t=topic))
    if n is not None:
        if n < 1:
            raise InputError(f"the number of prompts must be >= 1, got {n}")
        if n > len(out):
            raise InputError(f"the built-in prompt set has {len(out)} prompts, {n} asked")
        return out[:n]
    return out


def read_prompts(path: str | Path, *, field: str = "prompt") -> list[str]:
    """Prompts from a file: one per line (blank lines skipped), or JSONL records (``.jsonl``
    or lines starting with ``{``) whose ``field`` holds the prompt.

    Errors name the file and line: ``prompts.jsonl:3: not valid JSON: ...``.
    """
    p = Path(path)
    raw = read_input(p, "prompts")
    out: list[str] = []
    is_jsonl = p.suffix == ".jsonl"
    for no, line_b in enumerate(raw.splitlines(), 1):
        line = text_line(p, no, line_b)
        if not line.strip():
            continue
        if is_jsonl or line.lstrip().startswith("{"):
            rec = json_line(p, no, line)
            if not isinstance(rec, dict) or field not in rec:
                raise InputError(f"{p}:{no}: record has no {field!r} field")
            value = rec[field]
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{p}:{no}: {field!r} must be a non-empty string")
            out.append(value)
        else:
            out.append(line)
    if not out:
        raise InputError(f"{p}: no prompts in the file")
    return out


def prompts_from_log(path: str | Path, *, account: str | None = None) -> list[str]:
    """The distinct last user messages a server's request log holds (only ``account``'s when
    given), in the order first asked: what a campaign asked, to ask a suspect again."""
    from distillmark.watermark.serve.log import read_log

    seen: dict[str, None] = {}
    n_records = 0
    for rec in read_log(path, account=account):
        n_records += 1
        if rec.messages is None:
            raise InputError(f"request log {path} keeps only digests of the messages "
                             "(--log-hashes): it holds no prompts to ask again")
        users = [m["content"] for m in rec.messages if m.get("role") == "user"]
        if users and users[-1].strip():
            seen.setdefault(users[-1], None)
    if not seen:
        who = f" of account {account!r}" if account is not None else ""
        raise InputError(f"request log {path} holds no prompts{who} ({n_records} requests)")
    return list(seen)

