"""Choose the corpus SAE's expansion and sparsity by measurement.

Collects training activations once (corpus ``train`` split, massive activations excluded, exactly as
``sensfind.dictionaries.corpus_sae.train_corpus_sae`` does), trains one SAE per configuration with SAELens and
measures each on the same held-out windows (``test`` split) with ``sae_quality``. Prints a markdown
table; ``--json PATH`` writes every number.

    python scripts/sweep_corpus_sae.py --model smollm2-135m --json runs/sae-sweep.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import sensfind as sf
from sensfind.dictionaries.corpus_sae import CorpusSAEConfig, clean_activations, sae_quality
from sensfind.models.prompts import load_corpus

GRID = [  # (expansion, architecture, l1_coefficient, k)
    (4, "standard", 2.0, 0), (8, "standard", 2.0, 0), (16, "standard", 2.0, 0),
    (8, "standard", 1.0, 0), (8, "standard", 4.0, 0), (8, "standard", 8.0, 0),
    (8, "topk", 0.0, 16), (8, "topk", 0.0, 32),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n-windows", type=int, default=CorpusSAEConfig.n_windows)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--epochs", type=int, default=CorpusSAEConfig.epochs)
    p.add_argument("--only", type=int, nargs="*", help="indices into the grid to run, in this order (default: all)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model = sf.load_model(args.model)
    base = CorpusSAEConfig(n_windows=args.n_windows, epochs=args.epochs, eval_windows=args.eval_windows)
    corpus = load_corpus(model)
    start = time.perf_counter()
    site = clean_activations(model, corpus.windows(base.n_windows, base.window, base.seed, split="train"), base.hook,
                            base.max_norm_ratio, base.exclude_first)
    collect = time.perf_counter() - start
    eval_windows = corpus.windows(base.eval_windows, base.window, base.seed, split="test")
    rows = []
    for i in args.only if args.only else range(len(GRID)):
        expansion, arch, l1, k = GRID[i]
        cfg = replace(base, expansion=expansion, architecture=arch, l1_coefficient=l1 or base.l1_coefficient,
                      k=k or base.k)
        start = time.perf_counter()
        dic = sf.train_sae(site.acts, cfg.hook, expansion * site.acts.shape[1], config=cfg.train_config(), seed=cfg.seed)
        train = time.perf_counter() - start
        start = time.perf_counter()
        q = sae_quality(model, dic, eval_windows, cfg.hook, cfg.max_norm_ratio, cfg.exclude_first, cfg.seed)
        rows.append(dict(expansion=expansion, architecture=arch, l1_coefficient=l1 if arch == "standard" else None,
                         k=k if arch == "topk" else None, train_seconds=train, quality_seconds=time.perf_counter() - start,
                         **q.to_dict()))
        logging.info("%s: %s", rows[-1], q.summary())
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(dict(model=args.model, collect_seconds=collect, exclusion=site.exclusion(),
                                                 base=base.to_dict(), rows=rows), indent=2))
    print(f"{len(site.acts)} training activations ({site.exclusion()['excluded']} excluded), collected in {collect:.0f} s")
    print("| expansion | sparsity | explained var. | L0 | dead | CE +SAE | CE +random | KL SAE | KL random | KL ratio | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sparsity = f"L1 {r['l1_coefficient']:g}" if r["architecture"] == "standard" else f"top-k {r['k']}"
        print(f"| {r['expansion']} | {sparsity} | {r['explained_variance']:.3f} | {r['l0']:.1f} | {r['dead_fraction']:.1%} | "
              f"{r['ce_increase_sae']:+.3f} | {r['ce_increase_random']:+.3f} | {r['kl_sae']:.3f} | {r['kl_random']:.3f} | "
              f"{r['kl_ratio']:.1f} | {r['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
