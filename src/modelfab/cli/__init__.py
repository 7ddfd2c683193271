"""The ``modelfab`` command line (typer); one module per command group."""
