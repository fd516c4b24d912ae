"""The `hsm-vault` command line: one module per command group, thin over library calls."""
