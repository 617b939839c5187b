"""Prompts of the distillation experiment: templates crossed with topics, in a fixed order.

The experiment's own 24 instruction templates x 40 topics (960 prompts) joined with the
package's built-in probe prompts, deduplicated and shuffled with a fixed seed; the first part
trains the students (teacher answers), the rest are held-out queries for the closed-model test.
"""

from __future__ import annotations

import random

TEMPLATES = [
    "Explain {t} to a ten-year-old.",
    "Write a short story that involves {t}.",
    "What are the most common misconceptions about {t}?",
    "Give me five practical tips related to {t}.",
    "Describe the history of {t} in a few paragraphs.",
    "Write a persuasive paragraph about why {t} matters.",
    "What questions would an expert ask about {t}?",
    "Summarise the pros and cons of {t}.",
    "Write a friendly email to a colleague about {t}.",
    "How would you teach a beginner about {t}?",
    "Write a poem about {t}.",
    "What is the future of {t} likely to look like?",
    "Compare {t} with something from everyday life.",
    "List the key terms someone should know about {t}, with definitions.",
    "Describe a typical day of a person who works with {t}.",
    "What are the ethical questions raised by {t}?",
    "Write a dialogue between two friends discussing {t}.",
    "Give a step-by-step guide to getting started with {t}.",
    "What surprising facts do you know about {t}?",
    "Write a product description for something related to {t}.",
    "How has {t} changed over the last fifty years?",
    "Write a news report about a discovery involving {t}.",
    "What would a world without {t} be like?",
    "Explain the science behind {t}.",
]

TOPICS = [
    "volcanoes", "honey bees", "the stock market", "black holes", "bread baking",
    "electric cars", "the Roman Empire", "sleep", "coral reefs", "chess",
    "vaccines", "public libraries", "rainforests", "jazz music", "recycling",
    "the human heart", "solar panels", "ancient Egypt", "social media", "photosynthesis",
    "marathon running", "the printing press", "earthquakes", "coffee", "machine learning",
    "the moon landing", "urban gardening", "whales", "the immune system", "trains",
    "climate change", "origami", "the internet", "dinosaurs", "meditation",
    "bicycles", "the water cycle", "volunteering", "castles", "spices",
]


def prompt_set(seed: int = 0) -> list[str]:
    """All distinct prompts, shuffled with ``seed`` (the same list on every machine): this
    module's templates x topics and the package's built-in probe prompts, 2,650 in all."""
    from distillmark.verify.prompts import builtin_prompts

    own = [tpl.format(t=topic) for topic in TOPICS for tpl in TEMPLATES]
    prompts = sorted(set(own) | set(builtin_prompts()))
    random.Random(seed).shuffle(prompts)
    return prompts
