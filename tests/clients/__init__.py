"""The real-client matrix: one script per client (run with .venv-clients/bin/python, never
imported by pytest) and :mod:`tests.clients.harness`, the pytest side that runs them."""
