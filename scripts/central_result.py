"""The central result: discovery and comparison on a real model over many corpus prompts.

For each of ``--prompts`` corpus windows (test split, massive-activation bases skipped and counted):
discovered optima against isotropic, cov-random and real-other directions and the SAE's active and
inactive latents (threshold angles on one shared scan grid); the optima matched with the SAE's latents
against an isotropic and a covariance-matched null; the most active latents refined by discovery.
The SAE is the demo's (``sensfind.train_corpus_sae`` with its default config: SAELens on corpus activations
at the site, massive ones excluded, cached). The work is done by ``sensfind.app.central``.

    python scripts/central_result.py --out runs/central --prompts 20
    python scripts/central_result.py --out runs/central --prompts 20 --shard 0/2   # two processes, then
    python scripts/central_result.py --out runs/central --prompts 20 --aggregate    # figures and report

Writes ``config.json``, ``prompts/NNN/`` (one analysis per prompt), ``results.json``, ``figures/*.png``
and ``report.html`` (summary, figures, the cards of the first prompt) into ``--out``. Prompts already
done in ``--out`` are kept (a stopped run continues).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from sensfind.app.central import CentralConfig, aggregate, analyse_prompts
from sensfind.lab.experiment import add_config_flags, config_from_flags


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flags(parser, CentralConfig, "central result")
    args = parser.parse_args(argv)
    try:
        config = config_from_flags(CentralConfig, args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("sensfind").setLevel(logging.WARNING)
    logging.getLogger("sensfind.app.central").setLevel(logging.INFO)
    torch.set_num_threads(1)
    if not config.aggregate:
        analyse_prompts(config, sys.argv[1:])
    if config.aggregate or config.shard == "0/1":
        print(json.dumps(aggregate(config), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
