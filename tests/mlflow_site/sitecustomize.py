"""Loaded by the test suite's `mlflow server` processes (their PYTHONPATH starts here).

MLflow 3's `runs/search` handler imports its optional basic-auth module on every request. Without
the `mlflow[auth]` extra that import fails, so it is tried again by the next request, and two
concurrent searches race: one finds the other's half-imported module and answers 500
(`module 'mlflow.server.auth' has no attribute 'auth_config'`, seen in CI). Marking the module
absent makes that import fail at once, every time, as the handler expects; the server is
otherwise untouched.
"""

import sys

sys.modules.setdefault("mlflow.server.auth", None)  # type: ignore[assignment]
