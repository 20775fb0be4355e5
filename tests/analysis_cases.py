"""A toy prompt analysis (``analyse_prompt`` on the toy model with a small SAE), built the same way by the
analysis tests and the result contract suite."""

import torch

from sensfind.comparison.analysis import AnalysisConfig, PromptAnalysis, analyse_prompt

SMALL = AnalysisConfig(max_points=None, restarts=4, iterations=3, scan_steps=8, n_random=4, n_cov=4, n_real_other=4,
                       max_active=3, n_inactive=2, n_refine=2, refine_iterations=2, curve_steps=13, stop=30.0, k=3,
                       n_null=30)


def toy_case():
    """(subject, dictionary, others, pool): the toy's first subject, an SAE whose decoder holds the toy's
    features and 8 random rows (encoder: the decoder's transpose), real-other and pool activations."""
    from sensfind.dictionaries.dictionary import from_tensors
    from sensfind.core.toy import ToyConfig, ToyModel

    toy = ToyModel(ToyConfig(seed=0))
    subject = toy.subject(0)
    w = torch.cat([toy.features, torch.randn(8, toy.d, generator=torch.Generator().manual_seed(0))]).float()
    dic = from_tensors(w, W_enc=w.T.contiguous())
    return subject, dic, subject.real_others(8, seed=1), subject.real_others(64, seed=2)


def toy_analysis(config: AnalysisConfig = SMALL) -> PromptAnalysis:
    return analyse_prompt(*toy_case(), config)
