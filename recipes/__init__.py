"""Ready-made workflows behind ``distill-apps recipe NAME``: continual replay (Avalanche), federated distillation
(Flower), private sharing (Opacus), NAS proxies (NNI), medical sharing (MedMNIST) and robustness. Each module has
``build_parser()`` and ``main(argv)``, and writes its results, plots and a markdown report under ``--out``."""
