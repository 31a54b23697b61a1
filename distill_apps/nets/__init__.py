"""Networks: ConvNet and the cross-architecture zoo, behind a registry."""
from . import classic, convnet  # noqa: F401  (registration)
from .convnet import ConvNet
from .registry import MODELS, build_model, check_model_name, list_models, register_model

__all__ = ["ConvNet", "MODELS", "build_model", "check_model_name", "list_models", "register_model"]
