"""Top-k latents: how much of the output does an SAE reconstruction keep with only its k largest latents?

For each real base ``x``, encode it, keep only the ``k`` largest active latents (zero the rest), decode,
and substitute the result at the site. Report KL(p0 || p) against the clean output and the
next-token cross-entropy (where the prompt's next token is known) as functions of ``k``; ``k`` = all is
the plain reconstruction. With a second SAE of lower L0 (``--sae-low``; for local models one is trained
with a larger L1 coefficient), compare "a high-L0 SAE cut to its top k" with "an SAE trained to have
L0 ≈ k" (Nanda et al. found the former better on a circuit task).

Claim tested: the smallest latents matter little (KL flattens well before k = L0), and cutting a
high-L0 SAE to its top k beats a low-L0 SAE at the same k.

    python experiments/topk_latents.py --model random:tiny
    python experiments/topk_latents.py --model gpt2 --sae-low disk:PATH_TO_LOW_L0_SAE
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from sensfind.effects import kl
from sensfind.runio import save_json, save_tensors
from sensfind.scan import base_output
from sensfind.synthetic import decode

from _common import (
    PUBLISHED_MODEL,
    Site,
    check_positive,
    describe,
    dictionary_info,
    experiment_parser,
    load_dictionary,
    run_experiment,
    split_pool,
    table,
)

NAME = "topk_latents"


def build_parser():
    parser, sizes = experiment_parser(__doc__.splitlines()[0], sae=True)
    g = parser.add_argument_group(NAME)
    g.add_argument("--sae-low", default="auto",
                   help="SAE of lower L0 to compare with (same forms as --sae); auto: trained locally with "
                        "--sae-low-l1 for local models, none for gpt2")
    g.add_argument("--sae-low-l1", type=float, default=4.0, help="L1 coefficient of the locally trained low-L0 SAE")
    sizes.add("--n-bases", 64, 12, "real bases")
    return parser, sizes


def k_grid(max_l0: int) -> list[int]:
    ks = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    return [k for k in ks if k < max_l0] + [max_l0]


def topk_codes(a: torch.Tensor, k: int) -> torch.Tensor:
    """``a [L]`` with all but its ``k`` largest entries zeroed."""
    out = torch.zeros_like(a)
    if k > 0:
        idx = a.topk(min(k, a.shape[0])).indices
        out[idx] = a[idx]
    return out.clamp(min=0)


def body(args, site: Site, run) -> str:
    check_positive(args, "n_bases")
    dic = load_dictionary(site, args)
    if dic is None:
        raise ValueError("topk_latents needs an SAE; --sae none is not allowed here")
    low_spec = args.sae_low
    if low_spec == "auto":
        low_spec = "none" if site.name == PUBLISHED_MODEL else "train"
    low = load_dictionary(site, args, spec=low_spec, l1=args.sae_low_l1) if low_spec != "none" else None
    run.config["sae"], run.config["sae_low"] = dictionary_info(dic), dictionary_info(low)
    bases, _ = split_pool(site, args.n_bases)
    n = args.n_bases
    has_loss = site.next_tokens is not None and bool((site.next_tokens[bases] >= 0).all())

    with torch.no_grad():
        codes = [dic.encode(site.pool[int(b)][None])[0].float() for b in bases]
        l0 = [int((a > 0).sum()) for a in codes]
        ks = k_grid(max(max(l0), 1))
        kl_k = torch.full((n, len(ks)), math.nan, dtype=torch.float64)
        ce_k = torch.full((n, len(ks)), math.nan, dtype=torch.float64)
        ce_clean = torch.full((n,), math.nan, dtype=torch.float64)
        low_kl = torch.full((n,), math.nan, dtype=torch.float64)
        low_ce = torch.full((n,), math.nan, dtype=torch.float64)
        low_l0 = torch.zeros(n)
        cut_kl = torch.full((n,), math.nan, dtype=torch.float64)  # main SAE cut to the low SAE's L0 on this base
        for i in range(n):
            subj = site.subject(int(bases[i]))
            p0 = base_output(subj)
            a = codes[i]
            x_k = decode(dic, torch.stack([topk_codes(a, min(k, l0[i])) for k in ks]))
            out = subj.run(x_k.to(subj.base.dtype))
            kl_k[i] = kl(p0, out).double()
            if has_loss:
                t = int(site.next_tokens[int(bases[i])])
                ce_k[i] = -torch.log_softmax(out.double(), -1)[:, t]
                ce_clean[i] = -torch.log_softmax(p0.double(), -1)[t]
            if low is not None:
                b = low.encode(subj.base.float()[None])[0].float()
                low_l0[i] = int((b > 0).sum())
                out_low = subj.run(decode(low, b[None]).to(subj.base.dtype))
                low_kl[i] = float(kl(p0, out_low)[0])
                if has_loss:
                    low_ce[i] = float(-torch.log_softmax(out_low.double(), -1)[0, t])
                cut = decode(dic, topk_codes(a, int(low_l0[i]))[None])
                cut_kl[i] = float(kl(p0, subj.run(cut.to(subj.base.dtype)))[0])

    curve = [dict(k=k, kl=describe(kl_k[:, j]), ce=describe(ce_k[:, j]) if has_loss else None) for j, k in enumerate(ks)]
    full_kl = kl_k[:, -1]
    half = next((c["k"] for c in curve if c["kl"]["mean"] <= 2 * float(full_kl.mean())), ks[-1])
    results = dict(k=ks, curve=curve, l0=describe(l0), clean_ce=describe(ce_clean) if has_loss else None,
                   k_within_2x_of_full_kl=half)
    tensors = {"k": torch.tensor(ks), "kl": kl_k, "ce": ce_k, "clean_ce": ce_clean, "l0": torch.tensor(l0)}
    if low is not None:
        results["low"] = dict(l0=describe(low_l0), kl=describe(low_kl), ce=describe(low_ce) if has_loss else None,
                              main_cut_to_low_l0_kl=describe(cut_kl),
                              frac_bases_cut_better=float((cut_kl < low_kl).double().mean()))
        tensors.update(low_kl=low_kl, low_ce=low_ce, low_l0=low_l0, cut_kl=cut_kl)
    save_json(run.path("results.json"), results)
    save_tensors(run.path("results.safetensors"), tensors)
    plot(run, site, ks, kl_k, ce_k, ce_clean, has_loss, low_l0, low_kl, low_ce, low is not None)

    rows = []
    for c in curve:
        row = {"k": c["k"] if c["k"] < ks[-1] else f"{c['k']} (all)", "KL (nats)": f"{c['kl']['mean']:.3g} ± {c['kl']['se']:.2g}"}
        if has_loss:
            row["next-token CE (nats)"] = f"{c['ce']['mean']:.3g}"
        rows.append(row)
    text = (f"{NAME}: {site.name}, {n} bases, SAE {dic.source} (L0 {results['l0']['mean']:.1f} ± "
            f"{results['l0']['sd']:.1f}); mean ± s.e. over bases (k beyond a base's L0 = all its latents)\n")
    text += table(rows, list(rows[0]))
    if has_loss:
        text += f"\nclean next-token CE {results['clean_ce']['mean']:.3g} nats"
    if low is not None:
        lo = results["low"]
        text += (f"\nlow-L0 SAE {low.source}: L0 {lo['l0']['mean']:.1f}, KL {lo['kl']['mean']:.3g} nats; main SAE cut to "
                 f"the same k per base: KL {lo['main_cut_to_low_l0_kl']['mean']:.3g} nats "
                 f"(cut better on {lo['frac_bases_cut_better']:.0%} of bases)")
    return text


def plot(run, site, ks, kl_k, ce_k, ce_clean, has_loss, low_l0, low_kl, low_ce, with_low) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if has_loss else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    x = np.array(ks, dtype=float)
    n = kl_k.shape[0]
    for ax, vals, ylabel in ((axes[0, 0], kl_k, "KL(p0 || p) (nats)"),
                             *(((axes[0, 1], ce_k, "next-token cross-entropy (nats)"),) if has_loss else ())):
        m = vals.mean(0).numpy()
        se = (vals.std(0) / math.sqrt(max(n, 1))).numpy()
        ax.errorbar(x, m, yerr=se, marker="o", capsize=3, label="main SAE, top-k latents kept (mean ± s.e.)")
        if with_low:
            low = low_kl if vals is kl_k else low_ce
            ax.errorbar([float(low_l0.mean())], [float(low.mean())], yerr=[float(low.std() / math.sqrt(n))],
                        marker="*", ms=12, color="C3", ls="none", label="low-L0 SAE, all latents (at its mean L0)")
        if vals is ce_k:
            ax.axhline(float(ce_clean.mean()), color="k", ls="--", lw=1, label="clean model")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("k (active latents kept)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{site.name}: SAE reconstruction with only the k largest latents")
    fig.tight_layout()
    fig.savefig(run.path("topk.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser, sizes = build_parser()
    return run_experiment(NAME, parser, sizes, body, argv)


if __name__ == "__main__":
    sys.exit(main())
