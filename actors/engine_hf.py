"""Generation engine on Hugging Face transformers: CPU or GPU, tests, the demo.

Batched sampling with ``model.generate`` (left-padded prompts, n samples per
prompt), behaviour log-probs from the raw logits as log_softmax(logits / T)
-- the distribution the learner scores -- and weights received from the
learner's broadcast group straight into the model's parameters.
"""
from __future__ import annotations

import numpy as np
import torch

from actors.engine import Sample
from common.models import load_model, load_tokenizer
from common.protocol import Sampling
from common.weight_sync import WeightGroup, WeightGroupSpec


class HFEngine:
    def __init__(self, model: str, *, device: str, dtype: str, seed: int):
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, dtype=dtype, device=device).eval()
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self.group: WeightGroup | None = None
        self.manifest: list = []
        torch.manual_seed(seed)

    @torch.no_grad()
    def generate(self, prompts: list[np.ndarray], sampling: Sampling, seed: int) -> list[list[Sample]]:
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding so that every row continues at the same position
            ids[i, width - len(p):] = torch.from_numpy(p.astype(np.int64))
            attn[i, width - len(p):] = 1
        # A fresh GenerationConfig so that a checkpoint's defaults (top_k=50, repetition
        # penalty) never change the sampling distribution behind the learner's back.
        gen = GenerationConfig(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                               max_new_tokens=sampling.max_tokens, num_return_sequences=sampling.n,
                               pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                               output_logits=True, return_dict_in_generate=True)
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            # the current CUDA device is per thread, and the actor generates on a worker thread
            torch.cuda.set_device(self.device)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
                                  generation_config=gen)
        new = out.sequences[:, width:].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu()  # [B*n, steps, V], unprocessed
        logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
        chosen = logp.gather(-1, new[:, : logp.shape[1]].unsqueeze(-1)).squeeze(-1)
        samples = [self._sample(new[r], chosen[r]) for r in range(new.shape[0])]
        return [samples[i * sampling.n:(i + 1) * sampling.n] for i in range(len(prompts))]

    def _sample(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> Sample:
        eos = (tokens == self.eos_id).nonzero()
        if len(eos):
            end = int(eos[0]) + 1
            return Sample(tokens[:end].numpy().astype(np.int32), logprobs[:end].numpy().astype(np.float32), "stop")
        return Sample(tokens.numpy().astype(np.int32), logprobs.numpy().astype(np.float32), "length")

    def join_weight_group(self, spec: WeightGroupSpec, manifest: list) -> None:
        params = dict(self.model.named_parameters())
        for name, shape, _ in manifest:
            if name not in params or list(params[name].shape) != list(shape):
                raise ValueError(f"learner's weight {name} {shape} does not match this actor's model; "
                                 f"actors and learner must load the same architecture")
        self.manifest = manifest
        self.group = WeightGroup(spec, device=self.device)

    def leave_weight_group(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None

    @torch.no_grad()
    def receive_weights(self) -> int:
        params = dict(self.model.named_parameters())
        received = 0
        for name, tensor in self.group.receive(self.manifest):
            params[name].copy_(tensor)
            received += tensor.numel() * tensor.element_size()
        return received

    def close(self) -> None:
        self.leave_weight_group()
