"""Contract suites for the types users plug into sensfind: :mod:`sensfind.testing.contracts`."""
