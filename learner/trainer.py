"""One training step on one rank: collate prompt groups, compute reference and
(optionally) recomputed behaviour log-probs, then the objective's loss per
micro-batch through the DeepSpeed engine (always ``deepspeed.initialize``;
ZeRO stage from config; gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch
import torch.distributed as dist

from common.models import load_model
from learner.algorithms import build_objective
from learner.buffer import Group
from learner.config import LearnerConfig
from learner.diagnostics import behaviour_mismatch, global_norm, spreads, was_clipped, zero_variance_fraction
from learner.losses import LOCAL, Across
from learner.model import Batch, PolicyWithLogZ, reference_logprobs
from learner.schedule import lr_factor


def collate(groups: list[Group], pad_id: int) -> Batch:
    comps = [(gi, g.prompt_tokens, c) for gi, g in enumerate(groups) for c in g.completions]
    B = len(comps)
    L = max(len(p) + len(c.tokens) for _, p, c in comps)
    T = max(len(c.tokens) for _, _, c in comps)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    resp = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T))
    old = torch.zeros((B, T))
    for i, (_, p, c) in enumerate(comps):
        n, r = len(p), len(c.tokens)
        input_ids[i, :n] = torch.from_numpy(p.astype(np.int64))
        input_ids[i, n:n + r] = torch.from_numpy(c.tokens.astype(np.int64))
        attn[i, :n + r] = 1
        resp[i, :r] = input_ids[i, n:n + r]
        mask[i, :r] = 1.0
        old[i, :r] = torch.from_numpy(c.logprobs.astype(np.float32))
    return Batch(input_ids, attn, torch.tensor([len(p) for _, p, _ in comps]),
                 torch.tensor([len(c.tokens) for _, _, c in comps]), resp, mask, old,
                 torch.tensor([c.score for _, _, c in comps], dtype=torch.float32),
                 torch.tensor([gi for gi, _, _ in comps]), torch.tensor([c.version for _, _, c in comps]))


def trim(b: Batch) -> Batch:
    """Drop the padding columns a micro-batch does not need."""
    L = int((b.prompt_lens + b.resp_lens).max())
    T = int(b.resp_lens.max())
    return Batch(b.input_ids[:, :L], b.attention_mask[:, :L], b.prompt_lens, b.resp_lens, b.resp_ids[:, :T],
                 b.mask[:, :T], b.old_logp[:, :T], b.scores, b.group_ids, b.versions)


def diversity(groups: list[Group]) -> tuple[float, float]:
    """(distinct completions / n, distinct bigrams / bigrams) averaged over groups."""
    ratios, d2 = [], []
    for g in groups:
        seqs = [tuple(c.tokens.tolist()) for c in g.completions]
        ratios.append(len(set(seqs)) / len(seqs))
        grams = [s[i:i + 2] for s in seqs for i in range(len(s) - 1)]
        d2.append(len(set(grams)) / len(grams) if grams else 0.0)
    return float(np.mean(ratios)), float(np.mean(d2))


class Trainer:
    def __init__(self, cfg: LearnerConfig, rank: int, world: int, device: torch.device, pad_id: int):
        import deepspeed

        self.cfg, self.rank, self.world, self.device, self.pad_id = cfg, rank, world, device, pad_id
        self.objective = build_objective(cfg.algo)
        policy = load_model(cfg.model, dtype=cfg.dtype, device=str(device))
        self.ref = None
        if self.objective.needs_ref:
            self.ref = copy.deepcopy(policy).eval().requires_grad_(False)
        module = PolicyWithLogZ(policy)
        groups = [{"params": list(policy.parameters()), "lr": cfg.lr}]
        if self.objective.uses_log_z:
            groups.append({"params": list(module.log_z.parameters()), "lr": cfg.algo.log_z_lr or cfg.lr})
        else:
            module.log_z.requires_grad_(False)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        seqs = (cfg.groups_per_step // world) * cfg.sampling.n
        self.gas = math.ceil(seqs / cfg.micro_batch_seqs)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_seqs,
            "gradient_accumulation_steps": self.gas,
            "train_batch_size": cfg.micro_batch_seqs * self.gas * world,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.dtype == "bfloat16"},
            "steps_per_print": 10 ** 9,
        }
        if cfg.dtype == "bfloat16" and cfg.zero_stage > 0:
            # gradients summed over micro-batches in bf16 (8-bit mantissa) lose about 1 % each
            # pass; ZeRO keeps the sum in fp32 (stage 0 cannot: DeepSpeed refuses that mix)
            ds_config["data_types"] = {"grad_accum_dtype": "fp32"}
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
            lr_factor, warmup_steps=cfg.lr_warmup_steps, schedule=cfg.lr_schedule, total_steps=cfg.max_steps,
            min_ratio=cfg.min_lr_ratio))
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=schedule,
                                               config=ds_config)
        self.module: PolicyWithLogZ = self.engine.module

    # ------------------------------------------------------------ step
    @torch.no_grad()
    def _pre_pass(self, full: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Behaviour (actor or recomputed) and reference log-probs for the whole rank batch."""
        old, ref = full.old_logp, None
        recompute = self.cfg.algo.old_logp_source == "learner"
        if not (self.objective.needs_ref or recompute):
            return old, ref
        if self.objective.needs_ref:
            ref = torch.zeros_like(full.old_logp)
        if recompute:
            old = torch.zeros_like(full.old_logp)
        for sl in self._micro(len(full.scores)):
            mb = trim(full.select(sl)).to(self.device)
            T = mb.mask.shape[1]
            if ref is not None:
                ref[sl, :T] = reference_logprobs(self.ref, mb, self.cfg.sampling.temperature).cpu()
            if recompute:
                old[sl, :T] = self.module(mb, self.cfg.sampling.temperature)[0].float().cpu()
        return old, ref

    def _across(self, counts: bool) -> Across:
        """Sums and maxima over the training ranks (on this rank's device: NCCL reduces only
        CUDA tensors); one rank: the identity. ``counts`` False (a rank rerunning a group at
        scale 0) joins the collectives with nothing: 0 to sums, -inf to maxima."""
        if self.world == 1:
            return LOCAL

        def reduce(op, empty: float):
            def f(t: torch.Tensor) -> torch.Tensor:
                out = t.detach().to(self.device, copy=True)
                if not counts:
                    out.fill_(empty)
                dist.all_reduce(out, op=op)
                return out.to(t.device)
            return f
        return Across(sum=reduce(dist.ReduceOp.SUM, 0.0), max=reduce(dist.ReduceOp.MAX, -math.inf))

    def _micro(self, n: int) -> list[slice]:
        m = self.cfg.micro_batch_seqs
        return [slice(i, min(i + m, n)) for i in range(0, n, m)]

    def step(self, groups: list[Group], version: int, scale: float = 1.0) -> dict:
        """One optimizer step on this rank's ``groups``; ``version`` is the policy version of the
        weights held before it (samples tagged with it were generated with exactly these weights).
        ``scale``: this rank's share of the batch's groups times the world size (learner/worker.py);
        0: no share, it reruns a group only to join the collectives, and its loss counts 0."""
        full = collate(groups, self.pad_id)
        old, ref = self._pre_pass(full)
        across = self._across(scale > 0)
        target = self.objective.prepare(full.scores, full.group_ids, full.mask, old, ref, across)
        slices = self._micro(len(full.scores))
        # each micro-batch's share of the sequences (or tokens) of the whole batch, all ranks:
        # its loss is a mean over those, so these weights make the step's loss the batch's mean
        counts = [float(full.mask[sl].sum()) if self.objective.mean_over == "token" else float(sl.stop - sl.start)
                  for sl in slices]
        total = float(across.sum(torch.tensor(sum(counts), dtype=torch.float64)))
        shares = [c / total if scale > 0 else 0.0 for c in counts]
        # ZeRO 2 reduces gradients in every micro-batch's backward (a collective), so every rank
        # must run as many as the others; a batch that does not split evenly over the ranks (an
        # epoch's last) leaves some fewer. They pad to a full batch's count with passes at weight
        # 0 over their first micro-batch (tests/unit/test_multirank.py hung without this).
        passes = slices + [slices[0]] * (self.gas - len(slices) if self.world > 1 else 0)
        means: dict[str, float] = {}  # each statistic's share of the batch's value ("_max": the maximum)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # mismatch |Δ|, k3, tokens
        finite = torch.ones((), dtype=torch.bool, device=self.device)  # every micro-batch's loss
        self.engine.train()
        # dropout stays off in the policy: its log-probs are compared with the actors' (which
        # sample in eval mode) and with the reference's; only the log Z head trains with it
        self.module.policy.eval()
        for k, sl in enumerate(passes):
            real = k < len(slices)
            mb = trim(full.select(sl)).to(self.device)
            T = mb.mask.shape[1]
            logp, log_z = self.engine(mb, self.cfg.sampling.temperature)
            loss, stats = self.objective.loss(
                logp.float(), old[sl, :T].to(self.device), None if ref is None else ref[sl, :T].to(self.device),
                mb.mask, log_z, target[sl].to(self.device) if target.dim() == 1 else target[sl, :T].to(self.device))
            weight = shares[k] if real else 0.0
            # The boundary is ours to mark, not DeepSpeed's micro-step count: gradients are
            # reduced and the optimizer steps after this rank's last micro-batch.
            self.engine.set_gradient_accumulation_boundary(k == len(passes) - 1)
            # DeepSpeed divides by gradient_accumulation_steps and averages over the ranks:
            # undo both, so the step's gradient is that of the batch's mean.
            self.engine.backward(loss * weight * self.gas * self.world)
            if not real:
                continue
            # Every micro-batch's forward sees the pre-step weights (the optimizer steps only
            # at the boundary), so fresh samples compare the engine with these exact weights.
            fresh = mb.mask * (mb.versions == version).to(mb.mask.dtype)[:, None]
            sums += torch.stack(behaviour_mismatch(logp.detach(), mb.old_logp, fresh)).double()
            finite &= torch.isfinite(loss.detach())
            stats = dict(stats, loss=float(loss.detach()))
            for key, v in stats.items():
                if key.endswith("_max"):  # a rank with no share still names the key: same collectives
                    means[key] = max(means.get(key, -math.inf), float(v) if weight else -math.inf)
                else:
                    means[key] = means.get(key, 0.0) + weight * float(v)
        lr = float(self.engine.optimizer.param_groups[0]["lr"])  # this step's: stepping advances the schedule
        norm, skipped = self._optimizer_step(finite)
        # per rank, weighted by its share of the groups (scale / world; 0 for a rank rerunning a
        # group): summed over the ranks, the batch's value even for an uneven last batch
        rank = {"grad_norm": norm, "grad_clipped": float(was_clipped(norm, self.cfg.grad_clip)), "lr": lr,
                "score_mean": float(full.scores.mean()),
                "zero_variance_groups": zero_variance_fraction(full.scores, full.group_ids)}
        means.update({k: v * scale / self.world for k, v in rank.items()})
        share = float(scale > 0)
        out = self._all_reduce(means, sums * share, float(full.mask.sum()) * share)
        out.update(spreads(out))
        out["skipped"] = skipped
        return out

    def _optimizer_step(self, finite: torch.Tensor) -> tuple[float, str]:
        """Step unless the loss (on any rank) or the gradient is not finite: NaN weights
        would be broadcast to every actor. Returns (gradient norm before clipping, "" or why
        the step was skipped: "loss" or "grad"); every rank decides alike."""
        if self.world > 1:
            bad = (~finite).to(torch.int32)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            finite = bad == 0
        loss_ok = bool(finite)
        if self.cfg.zero_stage == 0:
            # Stage 0 keeps the reduced, unclipped gradients (the same on every rank) in .grad
            # until step() clips them: decide here, and leave DeepSpeed out of a skipped step.
            norm = global_norm(p.grad for p in self.engine.module.parameters())
            if not (loss_ok and math.isfinite(norm)):
                self.engine.zero_grad()
                return norm, "loss" if not loss_ok else "grad"
            self.engine.step()
            return norm, ""
        # ZeRO partitions the gradients: its optimizer checks them for inf/NaN across ranks
        # and skips the step itself (counting it in skipped_steps); the norm comes after.
        before = self.engine.skipped_steps
        self.engine.step()
        norm = float(self.engine.get_global_grad_norm())
        if self.engine.skipped_steps > before:
            return norm, "loss" if not loss_ok else "grad"
        if not loss_ok:
            raise RuntimeError("a non-finite loss left finite gradients and ZeRO applied the step")
        return norm, ""

    def _all_reduce(self, shares: dict, sums: torch.Tensor, tokens: float) -> dict:
        """``shares`` summed over the ranks (keys ending in "_max": the maximum); the mismatch
        sums and token counts add up."""
        keys = sorted(k for k in shares if not k.endswith("_max"))
        top = sorted(k for k in shares if k.endswith("_max"))
        t = torch.cat([torch.tensor([shares[k] for k in keys] + [tokens], dtype=torch.float64,
                                    device=self.device), sums])
        m = torch.tensor([shares[k] for k in top], dtype=torch.float64, device=self.device)
        if self.world > 1:  # on the rank's device: NCCL reduces only CUDA tensors
            dist.all_reduce(t)
            dist.all_reduce(m, op=dist.ReduceOp.MAX)
        vals = t.tolist()
        out = dict(zip(keys, vals)) | dict(zip(top, m.tolist()))
        out["response_tokens"] = vals[len(keys)]
        abs_sum, k3_sum, fresh = vals[len(keys) + 1:]
        out["behaviour_logp_abs_diff"] = abs_sum / fresh if fresh else None
        out["behaviour_mismatch_kl"] = k3_sum / fresh if fresh else None
        return out

    # ------------------------------------------------------------ weights out
    def snapshot(self) -> tuple[list[tuple[str, torch.Tensor]], "torch.cuda.Event | None"] | None:
        """Rank 0: a copy of the policy weights for the actors, and on CUDA an event recorded
        after the copies, which the broadcast stream waits for. Other ranks: None."""
        if self.rank != 0:
            return None
        named = [(name, p.detach().clone()) for name, p in self.module.policy_weights()]
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        return named, ready

    def save(self, path: str, tokenizer, meta: dict) -> None:
        """HF policy directory + log Z head + meta, written by rank 0."""
        import json
        from pathlib import Path

        if self.rank != 0:
            return
        out = Path(path)
        self.module.policy.save_pretrained(out / "policy")
        tokenizer.save_pretrained(out / "policy")
        torch.save(self.module.log_z.state_dict(), out / "log_z.pt")
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
