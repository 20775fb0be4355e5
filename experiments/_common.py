"""Old home of the experiments' shared machinery, now in the library; these names stay importable."""

from sensfind.lab.experiment import PUBLISHED, Run, Scans, ScanSettings, resolve_scans, run_experiment  # noqa: F401
from sensfind.reporting.plots import plot_distributions, plot_mean_curves  # noqa: F401
from sensfind.lab.pool import (PUBLISHED_MODEL, TOY, PoolConfig, PoolSite as Site, collect_activations,  # noqa: F401
                           exclusion_line, load_pool_site as load_site, pick, split_pool)
from sensfind.lab.pool_sae import dictionary_info, load_pool_sae as load_dictionary, synthetic_activations  # noqa: F401
from sensfind.reporting.stats import describe, fmt, ks, table  # noqa: F401
