"""CLI commands beyond the core ones, one module per area. Each module registers its commands
on :data:`visdex.cli.app` when imported; :func:`visdex.cli.main` imports them all."""
