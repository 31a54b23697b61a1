"""Adapters that plug distilled summaries into host libraries through their own extension points: Avalanche
(``avalanche``: a storage policy), Flower (``flower``: ClientApp/ServerApp and strategies), Opacus (``opacus``: the
DP-SGD baseline), NNI (``nni``: proxy evaluators, searches, the rank-correlation study) and MedMNIST (``medical``).
Each imports its host lazily (a missing extra raises ImportError naming ``pip install distill-apps[extra]``) and
uses only the public API of :mod:`distill_apps` (``tests/test_public_api.py`` holds them to it)."""
