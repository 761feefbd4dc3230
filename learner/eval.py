"""Evaluate a policy checkpoint: accuracy, pass@k and diversity of its samples.

    python -m learner.eval --checkpoint runs/flowrl/checkpoint-final --tasks arithmetic many_answers \\
        --samples 16 --out eval.json

``--checkpoint`` is a learner checkpoint (its ``policy/`` directory is loaded),
any Hugging Face model directory, or "embedded". For every prompt it samples
``--samples`` completions (temperature 0.6, top-p 0.95 by default: the paper's
Avg@16 setting), scores them with the reward sandbox, and reports per task:

- mean accuracy over all samples (Avg@k with k = --samples) and pass@k for
  k in 1, 4, 16 up to --samples (unbiased estimator, Chen et al. 2021);
- distinct correct answers per prompt (how many different right answers the
  policy gives: the mode coverage FlowRL is meant to keep), the entropy in bits
  of the extracted-answer distribution per prompt (no answer counts as one
  outcome), and distinct-1/2 of the completions' tokens per prompt.

Prints a table and writes everything, per prompt too, as JSON with ``--out``.
Generation uses transformers (``--engine hf``) or vLLM (``--engine vllm``)
directly: the learner never imports the actors. ``paired_gain`` compares two
evaluations of the same prompts (the demo's before and after training).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from common.data import TaskItem, load_tasks
from common.models import EMBEDDED, ModelLoadError, encode_prompt, load_model, load_tokenizer

PASS_KS = (1, 4, 16)


# --------------------------------------------------------------------------- metrics (pure)
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def entropy_bits(outcomes: list) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``outcomes``."""
    counts = Counter(outcomes).values()
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts) if total else 0.0


def distinct_n(seqs: list[list[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over a set of token sequences (0 when there are none)."""
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def answer_of(kind: str, text: str):
    """The comparable final answer of a completion: an int for "choice", the extracted
    string for "math", the stripped text otherwise (code: two programs are two answers)."""
    if kind == "choice":
        from reward_sandbox.choice import extract_answer
        return extract_answer(text)
    if kind == "math":
        from reward_sandbox.math_extract import extract_answer
        ans = extract_answer(text)
        return None if ans is None else ans.replace(" ", "")
    return text.strip() or None


def prompt_stats(kind: str, texts: list[str], tokens: list[list[int]], scores: list[float]) -> dict:
    """Everything reported for one prompt's samples."""
    n = len(scores)
    answers = [answer_of(kind, t) for t in texts]
    correct = [a for a, s in zip(answers, scores) if s >= 1.0]
    stats = {"accuracy": sum(scores) / n, "correct": len(correct),
             "distinct_correct": len({a for a in correct if a is not None}),
             "answer_entropy": entropy_bits(["<none>" if a is None else a for a in answers]),
             "no_answer": sum(a is None for a in answers) / n,
             "distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
             "mean_tokens": sum(map(len, tokens)) / n,
             "answers": dict(Counter(str(a) for a in answers).most_common())}
    for k in PASS_KS:
        if k <= n:
            stats[f"pass@{k}"] = pass_at_k(n, len(correct), k)
    return stats


_AVERAGED = ("accuracy", "distinct_correct", "answer_entropy", "no_answer", "distinct_1", "distinct_2",
             "mean_tokens") + tuple(f"pass@{k}" for k in PASS_KS)


def summarize(per_prompt: list[dict]) -> dict:
    """Means over prompts of the per-prompt figures (accuracy becomes mean_accuracy, i.e. Avg@k)."""
    out = {}
    for key in _AVERAGED:
        if key in per_prompt[0]:
            out["mean_accuracy" if key == "accuracy" else key] = sum(p[key] for p in per_prompt) / len(per_prompt)
    return out


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); 0 for one value). The values are
    per-prompt accuracies: a prompt's samples are not independent of each other, its mean is."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_and_se needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired_gain(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean gain and its standard error from per-prompt accuracies of the same prompts, in the
    same order, before and after: pairing removes the prompts' own difficulty from the error."""
    if len(before) != len(after):
        raise ValueError(f"paired_gain: {len(before)} prompts before, {len(after)} after")
    return mean_and_se([a - b for b, a in zip(before, after)])


# --------------------------------------------------------------------------- model side
def resolve_checkpoint(path: str) -> str:
    """The loadable model for a learner checkpoint dir, an HF dir, or "embedded"."""
    if path == EMBEDDED:
        return path
    p = Path(path)
    if (p / "policy" / "config.json").is_file():
        return str(p / "policy")
    if (p / "config.json").is_file():
        return str(p)
    raise ModelLoadError(f"checkpoint {path!r} has neither policy/config.json nor config.json "
                         f"(give a learner checkpoint dir, a Hugging Face model dir, or 'embedded')")


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[int]], *, samples: int, temperature: float, top_p: float,
           max_tokens: int, seed: int) -> list[list[list[int]]]:
    """``samples`` completions (token ids, cut after EOS) for each prompt, generated together."""
    from transformers import GenerationConfig

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every row continues at the same position
        ids[i, width - len(p):] = torch.tensor(p)
        attn[i, width - len(p):] = 1
    # A fresh config so that a checkpoint's defaults (top_k=50, repetition penalty) do not apply.
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_tokens,
                           num_return_sequences=samples, pad_token_id=pad, eos_token_id=eos)
    torch.manual_seed(seed)
    new = model.generate(input_ids=ids, attention_mask=attn, generation_config=gen)[:, width:].tolist()
    cut = [row[:row.index(eos)] if eos in row else row for row in new]
    return [cut[i * samples:(i + 1) * samples] for i in range(len(prompts))]


class VLLMSampler:
    """``sample`` through vLLM (its CPU build here, the GPU build on a cluster): on this 2-core
    machine it generates several times faster than ``model.generate`` once started (~20-40 s).
    vLLM is imported directly, not through the actors' engine: the learner never imports actors."""

    def __init__(self, path: str, *, seed: int, max_model_len: int = 512, kv_cache_gib: float = 0.5):
        from vllm import LLM
        from vllm.platforms import current_platform

        from common.models import hf_directory

        cpu = current_platform.device_type == "cpu"
        self.llm = LLM(model=hf_directory(path), dtype="float32", seed=seed, max_model_len=max_model_len,
                       enable_prefix_caching=True,  # a prompt's samples share its prefill
                       # on CPU vLLM reads gpu_memory_utilization as a fraction of all RAM: size the cache
                       kv_cache_memory_bytes=int(kv_cache_gib * 2 ** 30) if cpu else None,
                       enforce_eager=cpu)  # graph compilation costs minutes on CPU for little

    def __call__(self, model, tokenizer, prompts: list[list[int]], *, samples: int, temperature: float,
                 top_p: float, max_tokens: int, seed: int) -> list[list[list[int]]]:
        from vllm import SamplingParams

        # No per-request seed: vLLM's CPU worker fails ("CPU Generator does not use offset") when a
        # seeded request's prefill is split over steps, which a batch of many prompts causes. The
        # engine's own seed (``--seed``) still makes a run reproducible.
        params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        eos = tokenizer.eos_token_id
        return [[list(c.token_ids[:list(c.token_ids).index(eos)] if eos in c.token_ids else c.token_ids)
                 for c in o.outputs] for o in outs]


def score(scorer, kind: str, texts: list[str], reference: str) -> list[float]:
    return scorer.score(kind, texts, [reference] * len(texts))


def eval_task(model, tokenizer, scorer, items: list[TaskItem], args) -> dict:
    """Sample, score and summarise one task; per-prompt detail included."""
    t0 = time.perf_counter()
    per_prompt = []
    for start in range(0, len(items), args.batch_prompts):
        batch = items[start:start + args.batch_prompts]
        outs = args.sampler(model, tokenizer, [encode_prompt(tokenizer, it.prompt) for it in batch], samples=args.samples,
                      temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                      seed=args.seed + start)
        for item, toks in zip(batch, outs):
            texts = [tokenizer.decode(t, skip_special_tokens=True) for t in toks]
            stats = prompt_stats(item.kind, texts, toks, score(scorer, item.kind, texts, item.reference))
            per_prompt.append(dict(prompt=item.prompt, example=texts[0][:300], **stats))
    return dict(prompts=len(items), samples=args.samples, **summarize(per_prompt),
                seconds=round(time.perf_counter() - t0, 1), per_prompt=per_prompt)


def evaluate(args, tasks: dict[str, list[TaskItem]]) -> dict:
    from reward_sandbox import LocalScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(path)
    if args.engine == "vllm":
        model, args.sampler = None, VLLMSampler(path, seed=args.seed)
    else:
        model, args.sampler = load_model(path).eval(), sample
    result = {"checkpoint": args.checkpoint, "model": path, "engine": args.engine, "samples": args.samples,
              "temperature": args.temperature,
              "top_p": args.top_p, "max_tokens": args.max_tokens, "seed": args.seed, "tasks": {}}
    with LocalScorer(math_workers=1) as scorer:
        for name, items in tasks.items():
            result["tasks"][name] = eval_task(model, tokenizer, scorer, items, args)
    return result


# --------------------------------------------------------------------------- output
def table(result: dict) -> str:
    n = result["samples"]
    ks = [k for k in PASS_KS if k <= n]
    cols = ["task", "prompts", f"avg@{n}"] + [f"pass@{k}" for k in ks] + [
        "distinct correct", "answer entropy", "distinct-1", "distinct-2", "no answer", "seconds"]
    rows = []
    for name, t in result["tasks"].items():
        rows.append([name, str(t["prompts"]), f"{t['mean_accuracy']:.3f}"] + [f"{t[f'pass@{k}']:.3f}" for k in ks] + [
            f"{t['distinct_correct']:.2f}", f"{t['answer_entropy']:.2f}", f"{t['distinct_1']:.3f}",
            f"{t['distinct_2']:.3f}", f"{t['no_answer']:.2f}", f"{t['seconds']:.0f}"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m learner.eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="learner checkpoint dir, HF model dir, or 'embedded'")
    p.add_argument("--tasks", nargs="+", default=["arithmetic"],
                   help="built-in task names or .jsonl files (space or comma separated)")
    p.add_argument("--num-prompts", type=int, default=16, help="prompts drawn from each built-in task")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the built-in task generator")
    p.add_argument("--samples", type=int, default=16, help="completions per prompt")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-prompts", type=int, default=4, help="prompts generated together")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf: transformers generate; vllm: vLLM (CPU build or GPU), faster once started")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 leaves the default")
    p.add_argument("--out", help="write the JSON here")
    a = p.parse_args(argv)
    a.tasks = [t for arg in a.tasks for t in arg.split(",") if t]
    if a.samples < 1 or a.num_prompts < 1 or a.batch_prompts < 1 or a.max_tokens < 1:
        p.error("--samples, --num-prompts, --batch-prompts and --max-tokens must be >= 1")
    if a.temperature <= 0 or not 0 < a.top_p <= 1:
        p.error("--temperature must be > 0 and --top-p in (0, 1]")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # a bad task name or checkpoint is one readable line; anything else keeps its traceback
        tasks = {name: load_tasks(name, n=args.num_prompts, seed=args.task_seed) for name in args.tasks}
    except ValueError as e:
        print(f"learner.eval: error: {e}", file=sys.stderr)
        return 2
    try:
        result = evaluate(args, tasks)
    except ModelLoadError as e:
        print(f"learner.eval: error: {e}", file=sys.stderr)
        return 2
    print(table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
