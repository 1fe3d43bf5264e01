"""The Layer gateway client: `AsyncHevlayer` and `Hevlayer`, generated from the gateway's openapi.yaml."""

import warnings

warnings.filterwarnings(
    "ignore",
    message=r'Field name "schema" in "NamespaceMetadata" shadows an attribute in parent "BaseModel"',
    category=UserWarning,
)

from ._runtime import GatewayUnreachableError, HevlayerError, LayerPerf, LayerResponse
from .client import OPERATIONS, AsyncHevlayer, Hevlayer
from .models import *

__version__ = "0.8.0"
__all__ = [
    "OPERATIONS",
    "AsyncHevlayer",
    "GatewayUnreachableError",
    "Hevlayer",
    "HevlayerError",
    "LayerPerf",
    "LayerResponse",
]
