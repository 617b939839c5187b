"""The lab: students distilled from a teacher's answers, and the story that tests them.

:mod:`.students` trains a small student from scratch on a teacher's answers, :mod:`.finetune`
fine-tunes a pretrained transformer on them (full or LoRA); :mod:`.story` has a teacher
answer with and without the watermark, trains a student on each set, serves each on loopback
and probes it, and audits its weights. The lab stands on the verifiers (probe, audit) and the
server; nothing else in ``verify`` depends on it.
"""

from __future__ import annotations

from .finetune import train_transformer_student
from .story import StoryResult, StudentResult, demo_story, distillation_story
from .students import TOKENIZER_FILES, default_tokenizer_dir, train_bigram_student

__all__ = ["TOKENIZER_FILES", "StoryResult", "StudentResult", "default_tokenizer_dir",
           "demo_story", "distillation_story", "train_bigram_student",
           "train_transformer_student"]
