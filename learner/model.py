"""The trained module: the policy LLM plus FlowRL's log Zφ(x) head, and the
forward that turns a padded batch of (prompt + completion) sequences into
per-token log-probs of the completion and log Z of the prompt.

Log-probs are of softmax(logits / temperature), the distribution actors
sample from. Logits are computed only at response positions (hidden states
gathered first), so memory grows with completion length, not prompt length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class LogZHead(nn.Module):
    """DESIGN.md section 5: [Linear(H,H) → GELU → LayerNorm → Dropout(0.1)] × 2 → Linear(H,1)
    on the policy's final hidden states mean-pooled over the prompt tokens."""

    def __init__(self, hidden: int, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled).squeeze(-1)


@dataclass
class Batch:
    """Right-padded sequences on one device."""

    input_ids: torch.Tensor  # [B, L] prompt + completion
    attention_mask: torch.Tensor  # [B, L]
    prompt_lens: torch.Tensor  # [B]
    resp_lens: torch.Tensor  # [B]
    resp_ids: torch.Tensor  # [B, T] completion tokens, right-padded
    mask: torch.Tensor  # [B, T] 1.0 on completion tokens
    old_logp: torch.Tensor  # [B, T] behaviour log-probs from the actor
    scores: torch.Tensor  # [B]
    group_ids: torch.Tensor  # [B]
    versions: torch.Tensor  # [B]

    def to(self, device) -> "Batch":
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def select(self, idx: slice) -> "Batch":
        return Batch(**{k: v[idx] for k, v in self.__dict__.items()})


def response_logprobs(decoder: nn.Module, lm_head: nn.Module, batch: Batch, temperature: float,
                      want_pooled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([B, T] log-probs of the completion tokens, [B, H] prompt-pooled hidden or None)."""
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    T = batch.resp_ids.shape[1]
    # position p predicts token p+1: completion token j sits at prompt_len + j, predicted at prompt_len + j - 1
    pos = (batch.prompt_lens[:, None] - 1 + torch.arange(T, device=hidden.device)[None, :])
    pos = pos.clamp(max=hidden.shape[1] - 1)
    h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = lm_head(h).float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.resp_ids[..., None]).squeeze(-1)
    logp = logp * batch.mask
    pooled = None
    if want_pooled:
        in_prompt = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < batch.prompt_lens[:, None])
        w = in_prompt.to(hidden.dtype)[..., None]
        pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1)
    return logp, pooled


class PolicyWithLogZ(nn.Module):
    """What DeepSpeed wraps: both parts train under one optimizer, and log Z's
    gradients flow into the LLM through the pooled hidden states."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.log_z = LogZHead(policy.config.hidden_size).to(next(policy.parameters()).dtype)

    def forward(self, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = getattr(self.policy, self.policy.base_model_prefix)
        logp, pooled = response_logprobs(decoder, self.policy.get_output_embeddings(), batch, temperature, True)
        return logp, self.log_z(pooled).float()

    def policy_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The weights actors load (HF names); the log Z head is never sent."""
        return list(self.policy.named_parameters())


@torch.no_grad()
def reference_logprobs(ref: nn.Module, batch: Batch, temperature: float) -> torch.Tensor:
    decoder = getattr(ref, ref.base_model_prefix)
    return response_logprobs(decoder, ref.get_output_embeddings(), batch, temperature)[0]
