"""The run machinery of `ltsei reproduce`, one module per role (see nbs/24_row_runs.ipynb): row runs and the one row protocol, kernels, launchers, the command."""
