"""``python -m wgmesh`` runs the command-line interface."""

from wgmesh.cli.main import main

raise SystemExit(main())
