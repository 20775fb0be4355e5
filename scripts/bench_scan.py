"""Benchmark batched scans: the fast path (prefix KV cache) against the reference path (full forward).

One *scan point* is one perturbed activation run through the model with the KL effect summed and
``.backward()`` taken to the directions (the only tensors that require grad; model weights are frozen).
A step scans ``directions x angles`` points in sphere mode (default 4 x 64 = 256), perturbing
``blocks.1.hook_resid_pre`` at the last token of a prompt of random token ids (local models have no
tokenizer). The reference path recomputes the whole prompt from the embedding for every point, with a
hook that writes the perturbed activation, as the anchors' code does.

FLOPs per point follow the analytic model of ``sensfind.lab.speed`` (GPT-2 small from layer 1 with 10
tokens: 0.466 GFLOP per point, forward and backward; SmolLM2-135M, ``--model smollm2-135m``: 0.527).
``roofline_fraction`` is that FLOP count times the measured points/s, divided by the FLOP/s of a
representative matmul (``[points, d] @ [d, d_mlp]``) timed in the same run, interleaved with the scan
steps so that both see the same machine load (this machine is shared): the ratio is taken within each
repeat and the median over repeats reported. For the same reason fp32 and bf16 steps alternate
(``bf16_speedup`` is the median of per-repeat ratios), and ``speedup_vs_reference`` divides the fast
path's points/s by the reference's with their steps alternating (``points_per_s_fast_paired``);
``points_per_s_fast`` is the median of the separate, longer measurement. ``roofline_fraction_bf16`` is
judged against a bf16 matmul timed the same way: on a CPU without AMX bf16 matrix products can be
slower than fp32 ones, so ``bf16_speedup`` is a property of the machine as much as of the code.

A second model (``compare_with``, default ``random:gpt2``) runs its fp32 fast-path steps interleaved with
the main model's, and ``compare.points_per_s_ratio`` is the per-repeat ratio of the two (median); a
summary line on stderr states it.

Memory allocation matters here: glibc serves blocks above 32 MiB with fresh mmaps and unmaps them on
free, so every ``[256, 50257]`` fp32 tensor of the logits and the KL (51 MB) is page-faulted in again:
about 100k minor faults (~400 MB) per bf16 step, roughly 40% of its time on this VM, and the main source
of run-to-run variance. ``--malloc-tune`` (or ``MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=4294967296`` in the environment) keeps freed blocks in the heap instead; the
JSON records either. The default is the untuned process, as a user gets it.

Run: ``python scripts/bench_scan.py --json`` (full, several minutes on 2 cores) or ``--quick`` (a tiny
model, seconds; for smoke tests). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch

import sensfind
from sensfind import ScanConfig, TransformerSubject, load_model, scan
from sensfind.core.effects import get_effect
from sensfind.core.geometry import perturb
from sensfind.lab.speed import flops_per_point, matmul_gflops, paired_median, peak_rss_gib, timed, tune_malloc

log = logging.getLogger("bench_scan")


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark.

    Attributes:
        model: ``random:<arch>`` (see ``sensfind.models.loading.LOCAL_ARCHITECTURES``) or a pretrained name.
        hook: the perturbed site (a ``blocks.L.hook_resid_pre`` takes the fast path).
        tokens: prompt length for the headline numbers.
        lengths: prompt lengths for the speedup-vs-length sweep (``tokens`` is added if missing).
        directions: scan directions per step; ``points // directions`` angles each (sphere, 0-180°).
        points: scan points per step.
        repeats: timed steps per measurement (the median is reported); ``warmup`` untimed ones first.
        ref_points, ref_repeats: the reference path is slow, so it is timed on fewer points
            (``ref_points`` at ``tokens`` tokens, proportionally fewer for longer prompts).
        threads: ``torch.set_num_threads`` (``None``: torch's default).
        agreement_directions, agreement_steps: the bf16-vs-fp32 threshold comparison (sphere scan).
        logit_scale: for the agreement only, W_U and b_U are multiplied by this. Random-init GPT-2 has
            logits with std ≈ 0.8, so KL never reaches τ = 0.5 on a sphere scan; ×3 gives std ≈ 2.4
            and thresholds near 40°, the regime of real GPT-2 (Heimersheim & Mendel). ``None``: 3 for
            ``random:*`` models, 1 (untouched) for trained ones.
        compare_with: a second model whose fp32 fast path is timed interleaved with this one's
            (``None`` or the same name: no comparison).
        tau: threshold (nats of KL) for the threshold step.
        seed: seeds the model, the prompts and the directions.
        malloc_tune: raise glibc's mmap/trim thresholds first (fewer page faults; see above).
    """

    model: str = "random:gpt2"
    hook: str = "blocks.1.hook_resid_pre"
    tokens: int = 10
    lengths: tuple[int, ...] = (10, 50, 200)
    directions: int = 4
    points: int = 256
    repeats: int = 11
    warmup: int = 2
    ref_points: int = 32
    ref_repeats: int = 3
    threads: int | None = None
    agreement_directions: int = 64
    agreement_steps: int = 91
    logit_scale: float | None = None
    compare_with: str | None = "random:gpt2"
    tau: float = 0.5
    seed: int = 0
    malloc_tune: bool = False

    def __post_init__(self):
        for name in ("tokens", "directions", "points", "repeats", "ref_points", "ref_repeats", "agreement_directions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.points % self.directions or self.points // self.directions < 2:
            raise ValueError(
                f"points ({self.points}) must be a multiple of directions ({self.directions}) with >= 2 angles each"
            )
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.agreement_steps < 2:
            raise ValueError(f"agreement_steps must be >= 2, got {self.agreement_steps}")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be positive prompt lengths, got {self.lengths}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.logit_scale is not None and self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")

    @property
    def angles(self) -> int:
        return self.points // self.directions


QUICK = dict(
    model="random:tiny",
    lengths=(4, 8, 16),
    tokens=8,
    points=16,
    directions=4,
    repeats=2,
    warmup=1,
    ref_points=4,
    ref_repeats=1,
    agreement_directions=8,
    agreement_steps=19,
    logit_scale=20.0,
    compare_with=None,
)


# -- measurements -------------------------------------------------------------------------------
def scan_step(subject: TransformerSubject, run, directions: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """One benchmark step: sphere-scan points, KL to the base output summed, backward to the directions."""
    dirs = directions.clone().requires_grad_(True)
    acts = perturb(subject.base, dirs, angles, mode="sphere")  # [R, K, d]
    out = run(acts.reshape(-1, acts.shape[-1]))  # [R·K, n_vocab]
    get_effect("kl")(subject.base_output, out).sum().backward()
    if dirs.grad is None or not torch.isfinite(dirs.grad).all():
        raise RuntimeError("the backward pass did not produce finite gradients for the directions")
    return dirs.grad


def arm_directions(directions: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """``directions`` if they have width ``d`` (another model's arm: as many, drawn the same way)."""
    if directions.shape[1] == d:
        return directions
    return torch.randn(directions.shape[0], d, generator=torch.Generator().manual_seed(seed))


def bench_fast(arms: dict, directions, angles, cfg: BenchConfig) -> dict:
    """Points/s of the fast path for each arm ``name: (subject, dtype)``, with a matmul in that dtype.

    The arms' steps and matmuls alternate within each repeat, so that all of them see the same load
    (this machine is shared); medians over ``cfg.repeats``.
    """
    points = directions.shape[0] * angles.shape[0]
    steps = {
        name: partial(scan_step, subject, subject.run, arm_directions(directions, subject.d, cfg.seed), angles)
        for name, (subject, _) in arms.items()
    }
    for step in steps.values():
        for _ in range(cfg.warmup):
            step()
    pps = {name: [] for name in arms}
    gflops = {name: [] for name in arms}
    for _ in range(cfg.repeats):
        for name, (subject, dtype) in arms.items():
            pps[name].append(points / timed(steps[name]))
            m = subject.model.cfg
            gflops[name].append(matmul_gflops(dtype, points, m.d_model, m.d_mlp))
    return {
        name: dict(
            points_per_s=statistics.median(pps[name]),
            all=pps[name],
            gflops=statistics.median(gflops[name]),
            gflops_all=gflops[name],
        )
        for name in arms
    }


def bench_reference(subject, directions, angles, cfg: BenchConfig) -> dict:
    """Points/s of the reference path (whole prompt per point), each step paired with a fast-path step.

    ``cfg.ref_points`` points at ``cfg.tokens`` tokens, fewer for longer prompts so that a step runs
    about the same number of token positions (at least 4 points); the rate per point is what counts.
    The fast-path steps in between give the speedup under the same load.
    """
    n_points = max(4, round(cfg.ref_points * cfg.tokens / subject.tokens.shape[1]))
    ref_dirs = directions[: max(1, min(directions.shape[0], n_points // 2))]
    ref_angles = torch.linspace(0.0, 180.0, max(2, n_points // ref_dirs.shape[0]))
    ref_points = ref_dirs.shape[0] * ref_angles.shape[0]
    points = directions.shape[0] * angles.shape[0]
    ref_step = partial(scan_step, subject, subject.run_reference, ref_dirs, ref_angles)
    fast_step = partial(scan_step, subject, subject.run, directions, angles)
    scan_step(subject, subject.run_reference, ref_dirs[:1], ref_angles[:2])  # warm-up on two points
    fast_step()
    ref, fast = [], []
    for _ in range(cfg.ref_repeats):
        ref.append(ref_points / timed(ref_step))
        fast.append(points / timed(fast_step))
    return dict(
        points_per_s=statistics.median(ref),
        all=ref,
        points=ref_points,
        fast_points_per_s=statistics.median(fast),
        fast_all=fast,
    )


def fast_path_name(subject: TransformerSubject) -> str:
    return "compact" if getattr(subject, "_compact", None) is not None else "transformer_lens"


def random_prompt(n_tokens: int, d_vocab: int, seed: int) -> list[int]:
    return torch.randint(0, d_vocab, (n_tokens,), generator=torch.Generator().manual_seed(seed)).tolist()


def agreement_logit_scale(cfg: BenchConfig) -> float:
    if cfg.logit_scale is not None:
        return cfg.logit_scale
    return 3.0 if cfg.model.startswith("random:") else 1.0


def bf16_agreement(cfg: BenchConfig, prompt: list[int]) -> dict:
    """Threshold steps (first KL > τ on a sphere scan) of bf16 vs fp32, on a sharpened random model."""
    model = load_model(cfg.model, seed=cfg.seed)
    logit_scale = agreement_logit_scale(cfg)
    if logit_scale != 1.0:
        with torch.no_grad():
            model.unembed.W_U.mul_(logit_scale)
            model.unembed.b_U.mul_(logit_scale)
    fp32 = TransformerSubject(model, prompt, hook=cfg.hook)
    bf16 = fp32.to_dtype(torch.bfloat16)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    directions = torch.randn(cfg.agreement_directions, fp32.d, generator=gen)
    config = ScanConfig(mode="sphere", steps=cfg.agreement_steps, effect="kl", tau=cfg.tau)
    idx = {}
    with torch.no_grad():  # chunks of directions keep the [points, vocab] outputs small
        for name, subject in (("fp32", fp32), ("bf16", bf16)):
            idx[name] = torch.cat([scan(subject, d, config).threshold_index for d in directions.split(8)])
    a, b = idx["fp32"], idx["bf16"]
    reached_a, reached_b = a >= 0, b >= 0
    agree = (reached_a == reached_b) & (~reached_a | ((a - b).abs() <= 1))
    step_deg = 180.0 / (cfg.agreement_steps - 1)
    both = reached_a & reached_b
    return dict(
        bf16_angle_agreement=float(agree.float().mean()),
        directions=cfg.agreement_directions,
        steps=cfg.agreement_steps,
        step_deg=step_deg,
        tau=cfg.tau,
        logit_scale=logit_scale,
        base_logit_std=float(fp32.base_output.std()),
        n_reached_fp32=int(reached_a.sum()),
        n_reached_bf16=int(reached_b.sum()),
        median_threshold_deg_fp32=float(a[reached_a].double().median() * step_deg) if reached_a.any() else None,
        max_step_difference=int((a - b)[both].abs().max()) if both.any() else None,
    )


# -- the run ------------------------------------------------------------------------------------
def run(cfg: BenchConfig) -> dict:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    malloc_tuned = tune_malloc() if cfg.malloc_tune else False
    load_start = os.getloadavg()
    lengths = sorted(set(cfg.lengths) | {cfg.tokens})
    model = load_model(cfg.model, seed=cfg.seed)
    mcfg = model.cfg
    gen = torch.Generator().manual_seed(cfg.seed)
    directions = torch.randn(cfg.directions, mcfg.d_model, generator=gen)
    angles = torch.linspace(0.0, 180.0, cfg.angles)
    prompts = {n: random_prompt(n, mcfg.d_vocab, cfg.seed + n) for n in lengths}
    subjects = {n: TransformerSubject(model, prompts[n], hook=cfg.hook) for n in lengths}
    layer = subjects[cfg.tokens].layer
    if layer is None:
        raise ValueError(f"hook {cfg.hook!r} does not take the fast path; use a blocks.L.hook_resid_pre hook")

    main = cfg.tokens
    log.info("fast path, fp32 and bf16 interleaved, %d tokens", main)
    bf16_subject = subjects[main].to_dtype(torch.bfloat16)
    arms = {"fp32": (subjects[main], torch.float32), "bf16": (bf16_subject, torch.bfloat16)}
    other = None
    if cfg.compare_with and cfg.compare_with != cfg.model:
        log.info("and %s's fp32 fast path interleaved with them", cfg.compare_with)
        other_model = load_model(cfg.compare_with, seed=cfg.seed)
        other_prompt = random_prompt(main, other_model.cfg.d_vocab, cfg.seed + main)
        other = TransformerSubject(other_model, other_prompt, hook=cfg.hook)
        arms["compare"] = (other, torch.float32)
    fast_main = bench_fast(arms, directions, angles, cfg)
    compare = None
    if other is not None:
        other_gflop = 2 * flops_per_point(other.model.cfg, other.layer, main) / 1e9
        compare = dict(
            model=cfg.compare_with,
            points_per_s_fast=fast_main["compare"]["points_per_s"],
            points_per_s_ratio=paired_median(fast_main["fp32"]["all"], fast_main["compare"]["all"]),
            gflop_per_point=other_gflop,
            roofline_fraction_fp32=paired_median(fast_main["compare"]["all"], fast_main["compare"]["gflops_all"],
                                                 other_gflop),
            fast_path=fast_path_name(other),
            all=fast_main["compare"]["all"],
        )
        del other, other_model
    del arms, bf16_subject
    fast, fast_bf16 = {main: fast_main["fp32"]}, fast_main["bf16"]
    for n in lengths:
        if n != main:
            log.info("fast path, fp32, %d tokens", n)
            fast[n] = bench_fast({"fp32": (subjects[n], torch.float32)}, directions, angles, cfg)["fp32"]
    rss_fast = peak_rss_gib()

    log.info("bf16 vs fp32 threshold agreement")
    agreement = bf16_agreement(cfg, prompts[main])

    reference = {}
    for n in lengths:
        log.info("reference path (paired with fast-path steps), fp32, %d tokens", n)
        reference[n] = bench_reference(subjects[n], directions, angles, cfg)

    check = directions[:2]
    with torch.no_grad():
        acts = perturb(subjects[main].base, check, angles[:: max(1, cfg.angles // 4)]).reshape(-1, mcfg.d_model)
        max_abs_diff = float((subjects[main].run(acts) - subjects[main].run_reference(acts)).abs().max())
    gflop = {n: flops_per_point(mcfg, layer, n) / 1e9 for n in lengths}
    achieved = fast[main]["points_per_s"] * 2 * gflop[main]

    by_length = [
        dict(
            tokens=n,
            points_per_s_fast=fast[n]["points_per_s"],
            points_per_s_reference=reference[n]["points_per_s"],
            reference_points=reference[n]["points"],
            points_per_s_fast_paired=reference[n]["fast_points_per_s"],
            speedup_vs_reference=reference[n]["fast_points_per_s"] / reference[n]["points_per_s"],
            gflop_per_point=2 * gflop[n],
            roofline_fraction_fp32=paired_median(fast[n]["all"], fast[n]["gflops_all"], 2 * gflop[n]),
        )
        for n in lengths
    ]
    return dict(
        points_per_s_fast=fast[main]["points_per_s"],
        points_per_s_reference=reference[main]["points_per_s"],
        speedup_vs_reference=reference[main]["fast_points_per_s"] / reference[main]["points_per_s"],
        speedup_vs_reference_by_length={str(r["tokens"]): r["speedup_vs_reference"] for r in by_length},
        sgemm_gflops=fast[main]["gflops"],
        sgemm_gflops_bf16=fast_bf16["gflops"],
        sgemm_shape=[cfg.points, mcfg.d_model, mcfg.d_mlp],
        gflop_per_point=2 * gflop[main],
        gflop_per_point_forward=gflop[main],
        achieved_gflops_fp32=achieved,
        roofline_fraction_fp32=paired_median(fast[main]["all"], fast[main]["gflops_all"], 2 * gflop[main]),
        roofline_points_per_s_fp32=fast[main]["gflops"] / (2 * gflop[main]),
        points_per_s_fast_bf16=fast_bf16["points_per_s"],
        bf16_speedup=paired_median(fast_bf16["all"], fast[main]["all"]),
        roofline_fraction_bf16=paired_median(fast_bf16["all"], fast_bf16["gflops_all"], 2 * gflop[main]),
        bf16_angle_agreement=agreement["bf16_angle_agreement"],
        bf16_agreement=agreement,
        compare=compare,
        peak_rss_gib=rss_fast,
        peak_rss_gib_with_reference=peak_rss_gib(),
        by_length=by_length,
        raw=dict(
            points_per_s_fast=fast[main]["all"],
            points_per_s_fast_bf16=fast_bf16["all"],
            points_per_s_reference=reference[main]["all"],
            points_per_s_fast_paired_with_reference=reference[main]["fast_all"],
            sgemm_gflops=fast[main]["gflops_all"],
            sgemm_gflops_bf16=fast_bf16["gflops_all"],
        ),
        scan=dict(
            mode="sphere",
            directions=cfg.directions,
            angles=cfg.angles,
            points=cfg.points,
            effect="kl (summed), backward to the directions",
            position="last token",
            layer=layer,
        ),
        max_abs_diff_fast_vs_reference=max_abs_diff,
        fast_path=fast_path_name(subjects[main]),
        torch_num_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        sensfind_version=sensfind.__version__,
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        loadavg_start=list(load_start),
        loadavg_end=list(os.getloadavg()),
        malloc_tuned=malloc_tuned,
        malloc_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        config=asdict(cfg),
    )


def summary(result: dict) -> str:
    """One line: the main model's fp32/bf16 points/s and roofline, and the comparison model's."""
    cfg = result["config"]
    line = (
        f"{cfg['model']}: {result['points_per_s_fast']:.0f} points/s fp32 (roofline {result['roofline_fraction_fp32']:.2f}), "
        f"{result['points_per_s_fast_bf16']:.0f} bf16 (roofline {result['roofline_fraction_bf16']:.2f}), "
        f"{result['speedup_vs_reference']:.1f}x the reference path at {cfg['tokens']} tokens"
    )
    c = result.get("compare")
    if c:
        line += (
            f"; {c['model']} in the same run: {c['points_per_s_fast']:.0f} points/s fp32 "
            f"(roofline {c['roofline_fraction_fp32']:.2f}), ratio {c['points_per_s_ratio']:.2f}"
        )
    return line


def parse_args(argv=None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the result as one line of JSON (default: indented)")
    p.add_argument("--output", help="also write the JSON result to this file")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes, for smoke tests")
    p.add_argument("--model", help="model name (default: random:gpt2)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--points", type=int, help="scan points per step (default 256)")
    p.add_argument("--directions", type=int, help="directions per step (default 4; angles = points / directions)")
    p.add_argument("--repeats", type=int, help="timed steps per measurement; the median is reported (default 11)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing (default 2)")
    p.add_argument("--tokens", type=int, help="prompt length for the headline numbers (default 10)")
    p.add_argument("--lengths", type=lambda s: tuple(int(x) for x in s.split(",")), help="e.g. 10,50,200")
    p.add_argument("--ref-points", type=int, help="points for the reference path (default 32)")
    p.add_argument("--ref-repeats", type=int, help="timed reference steps (default 3)")
    p.add_argument("--agreement-directions", type=int, help="directions in the bf16 agreement scan (default 64)")
    p.add_argument("--logit-scale", type=float,
                   help="scale the logits for the agreement (default: 3 for random:* models, 1 for trained ones)")
    p.add_argument("--compare-with", help="second model timed interleaved (default random:gpt2; 'none': no comparison)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--malloc-tune", action="store_true", default=None, help="keep large freed blocks in glibc's heap"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    overrides = dict(QUICK) if args.quick else {}
    for field in BenchConfig.__dataclass_fields__:
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    if overrides.get("compare_with") == "none":
        overrides["compare_with"] = None
    return replace(BenchConfig(), **overrides), args


def main(argv=None) -> None:
    cfg, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    result = run(cfg)
    print(summary(result), file=sys.stderr)
    text = json.dumps(result) if args.json else json.dumps(result, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
