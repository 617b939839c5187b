"""Transformer students: a pretrained causal LM fine-tuned on a teacher's answers, as a
competitor distils (extra ``hf``; LoRA needs ``peft``).

:func:`train_transformer_student` takes the same ``(prompt_ids, completion_ids)`` pairs as
:func:`~distillmark.verify.lab.students.train_bigram_student` and fine-tunes a Hugging Face
causal LM on them with transformers' ``Trainer``: supervised fine-tuning with the loss on the
answer tokens and their end token only (the prompt, already rendered with the model's chat
template, conditions them), either every weight (full fine-tune) or low-rank adapters on every
linear layer (LoRA through ``peft``, merged into the weights before saving). The default base is
the embedded SmolLM2-135M-Instruct: the teacher's own weights as the student's starting point,
so whatever mark the student carries came from the sampled answers alone.

The result is an ordinary Hugging Face model folder (weights, config, the base's tokenizer
files and ``distill_train.json``) that ``serve``, ``probe`` and ``audit`` take as they are. It is
written beside its destination and renamed onto it, so an interrupted run leaves no half model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from distillmark.watermark.errors import InputError, ParameterError

from .students import TokenPairs, _check_pairs, default_tokenizer_dir, save_student

__all__ = ["train_transformer_student"]


def _examples(pairs: list[tuple[list[int], list[int]]], eos_id: int,
              max_len: int) -> list[dict[str, list[int]]]:
    """One example per pair: the prompt (labels -100) then the answer and its end token,
    cut at ``max_len`` tokens; pairs whose prompt leaves no answer token are dropped."""
    out = []
    for p, c in pairs:
        ids = (p + c + [eos_id])[:max_len]
        labels = ([-100] * len(p) + c + [eos_id])[:max_len]
        if any(t != -100 for t in labels):
            out.append({"input_ids": ids, "labels": labels})
    return out


def train_transformer_student(pairs: TokenPairs, out_dir: str | Path, *,
                              base: str | Path | None = None, lora_rank: int | None = None,
                              epochs: float = 1.0, lr: float | None = None,
                              batch_size: int = 8, max_len: int = 512, seed: int = 0,
                              eos_id: int | None = None,
                              threads: int | None = None) -> dict[str, Any]:
    """Fine-tune a pretrained causal LM on ``pairs`` and save it as a Hugging Face model.

    Args:
        pairs: ``(prompt_ids, completion_ids)`` per teacher answer, ids of the base model's
            tokenizer, the prompt rendered with its chat template (``Completion.prompt_ids``).
        out_dir: where the model goes (replaced atomically); it also receives the base's
            tokenizer files and ``distill_train.json`` (the returned info).
        base: a Hugging Face model folder to start from (default: the embedded SmolLM2's
            transformers copy, :func:`~distillmark.verify.lab.students.default_tokenizer_dir`).
        lora_rank: None for a full fine-tune; r > 0 for LoRA adapters of rank r (alpha 2r) on
            every linear layer, merged into the saved weights.
        epochs: passes over the pairs.
        lr: AdamW's learning rate, linearly decayed to 0 (default 1e-4 full, 1e-3 LoRA).
        batch_size: sequences per step.
        max_len: tokens per sequence (prompt included); longer ones are cut.
        seed: the data order's and the adapters' seed.
        eos_id: the end token after each answer (default: the base config's ``eos_token_id``).
        threads: torch threads (None: leave torch's setting).

    Returns:
        ``train_s``, ``final_loss`` (mean training loss over the run), ``steps``, ``epochs``,
        ``n_seqs``, ``train_tokens`` (answer tokens with a loss), ``tokens_per_s``, ``lora_rank``,
        ``lr``, ``base``.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    if lora_rank is not None and lora_rank < 1:
        raise ParameterError(f"`lora_rank` must be >= 1 (or None for a full fine-tune), "
                             f"got {lora_rank}")
    if not epochs > 0:
        raise ParameterError(f"`epochs` must be > 0, got {epochs}")
    if batch_size < 1:
        raise ParameterError(f"`batch_size` must be >= 1, got {batch_size}")
    if max_len < 2:
        raise ParameterError(f"`max_len` must be >= 2, got {max_len}")
    lr = (1e-3 if lora_rank else 1e-4) if lr is None else lr
    if not lr > 0:
        raise ParameterError(f"`lr` must be > 0, got {lr}")
    base_dir = Path(base) if base is not None else default_tokenizer_dir()
    if not (base_dir / "config.json").is_file():
        raise InputError(f"{base_dir}: not a Hugging Face model folder (no config.json)")
    if threads is not None:
        torch.set_num_threads(threads)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base_dir)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    eos = int(eos_id if eos_id is not None else model.config.eos_token_id)
    if not 0 <= eos < vocab:
        raise ParameterError(f"`eos_id` must be in [0, {vocab}), got {eos}")
    if tok.pad_token_id is None:
        tok.pad_token_id = eos
    data = _examples(_check_pairs(pairs, vocab), eos, max_len)
    if not data:
        raise InputError(f"no answer token within the first {max_len} tokens of any pair")
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
            target_modules="all-linear", task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory(prefix="distillmark-sft-") as work:
        args = TrainingArguments(
            output_dir=work, per_device_train_batch_size=batch_size, num_train_epochs=epochs,
            learning_rate=lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
            seed=seed, data_seed=seed, save_strategy="no", logging_strategy="no",
            report_to=[], disable_tqdm=True, dataloader_num_workers=0,
            remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        trainer = Trainer(model=model, args=args, train_dataset=data,
                          data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100))
        t0 = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - t0
    trained = model.merge_and_unload() if lora_rank else model
    n_tok = sum(sum(t != -100 for t in ex["labels"]) for ex in data)
    steps = int(result.global_step)
    info = {"train_s": train_s, "final_loss": float(result.training_loss), "steps": steps,
            "epochs": epochs, "n_seqs": len(data), "train_tokens": n_tok,
            "tokens_per_s": n_tok * epochs / train_s if train_s > 0 else 0.0,
            "lora_rank": lora_rank, "lr": lr, "base": str(base_dir)}
    save_student(trained, Path(out_dir), base_dir, info)
    return info
