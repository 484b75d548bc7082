"""What the tests and the benchmarks share: tiny real GGUF files (``ggufmaker``), synthetic
``ModelInfo`` values (``factories``) and a real gateway started in its own process group
(``serving``).

A top-level package beside ``gateway`` and ``planner`` (pyproject.toml installs it with them) so
that ``tests/`` and ``bench/`` both import it by name, without ``sys.path`` edits; never part of
the product: nothing in ``gateway/`` or ``planner/`` imports it.
"""
