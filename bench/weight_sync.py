"""Weight broadcast benchmark: the project's bucketed broadcast
(common/weight_sync.py, one collective per 64 MB bucket) against the naive
baseline of one collective per tensor, learner rank 0 -> N receivers over gloo,
with the embedded SmolLM2-135M's real parameter shapes (float32).

    python bench/weight_sync.py [--receivers 2] [--rounds 5]

Prints median seconds and the ratio; writes bench/results/weight_sync.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from common.weight_sync import WeightGroup, WeightGroupSpec, make_manifest


def embedded_manifest() -> list:
    from common.models import load_model
    return make_manifest(load_model("embedded").named_parameters())


def _member(rank: int, world: int, port: int, manifest: list, rounds: int, out) -> None:
    torch.set_num_threads(1)
    g = WeightGroup(WeightGroupSpec("127.0.0.1", port, world, rank, "gloo", 300))
    named = [(n, torch.randn(s)) for n, s, _ in manifest] if rank == 0 else None
    times = {"bucketed": [], "per_tensor": []}
    for _ in range(rounds):
        for mode, bucket in (("bucketed", 64 * 2 ** 20), ("per_tensor", 1)):  # bucket=1 byte: one tensor each
            g.spec = replace(g.spec, bucket_bytes=bucket)  # every member alike, as the spec is the group's
            g.pg.barrier().wait()
            t0 = time.perf_counter()
            if rank == 0:
                g.broadcast(named)
            else:
                for _ in g.receive(manifest):
                    pass
            times[mode].append(time.perf_counter() - t0)
    if rank == 0:
        out.put(times)
    g.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--receivers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    manifest = embedded_manifest()
    nbytes = sum(torch.Size(s).numel() * 4 for _, s, _ in manifest)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    world = a.receivers + 1
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_member, args=(r, world, port, manifest, a.rounds, out)) for r in range(world)]
    for p in procs:
        p.start()
    times = out.get(timeout=1800)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"member exited {p.exitcode}")
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": "embedded SmolLM2-135M-Instruct (float32)", "tensors": len(manifest), "bytes": nbytes,
              "receivers": a.receivers, "rounds": a.rounds, "median_s": med, "raw_s": times,
              "ratio_per_tensor_over_bucketed": med["per_tensor"] / med["bucketed"],
              "bucketed_GBps": nbytes / med["bucketed"] / 1e9}
    print(f"{len(manifest)} tensors, {nbytes / 1e6:.0f} MB to {a.receivers} receivers (gloo, median of {a.rounds}):")
    print(f"  bucketed   {med['bucketed']:.3f} s  ({result['bucketed_GBps']:.2f} GB/s)")
    print(f"  per tensor {med['per_tensor']:.3f} s  -> bucketed is {result['ratio_per_tensor_over_bucketed']:.2f}x")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/weight_sync.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
