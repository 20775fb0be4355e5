"""The package surface: what `import sensfind` loads and exports."""

import subprocess
import sys

import sensfind as sf


def test_import_does_not_load_optuna_or_sae_lens():
    code = "import sys, sensfind; print('optuna' in sys.modules, 'sae_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_exported_name_resolves():
    for name in sf.__all__:
        assert getattr(sf, name) is not None, name
    from sensfind.tuning import TuneConfig, tune

    assert sf.tune is tune and sf.TuneConfig is TuneConfig
    assert "tune" in dir(sf)


# names that moved to their own module when a large one was split: (old module, new module, names)
MOVED = [
    ("optimize", "starts", ["initial_directions", "metric_directions"]),
    ("optimize", "checkpoint", ["load_checkpoint"]),
    ("optimize", "refinement", ["Refinement", "refine"]),
    ("optimize", "rounds", ["NonFiniteOutputError"]),
    ("dictionary", "sae_training", ["TrainSAEConfig", "train_sae"]),
    ("kernel", "blocks", ["BlockFamily", "block_family", "has_hooks", "unsupported"]),
    ("subjects", "transformer_subject", ["TransformerSubject", "tokenize_prompt", "encode_bytes", "MASSIVE_NORM_RATIO"]),
]


def test_moved_names_keep_their_old_import_path():
    import importlib

    for old, new, names in MOVED:
        old_module = importlib.import_module(f"sensfind.{old}")
        new_module = importlib.import_module(f"sensfind.{new}")
        for name in names:
            assert getattr(old_module, name) is getattr(new_module, name), f"sensfind.{old}.{name}"
