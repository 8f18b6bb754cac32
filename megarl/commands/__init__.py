"""Command-line entry points of the `megarl` command whose library code sits in lower packages (the top
floor of the package layers, README "Architecture"): `megarl config`, `megarl eval`, `megarl grade`."""
