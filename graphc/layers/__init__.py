"""The layer registry. Adding a layer kind: write its module, import and
register it here, add its test file and an example spec."""
from __future__ import annotations

from ..errors import InternalError
from .base import REQUIRED, Call, LayerKind, Param, Port

LAYERS: dict[str, LayerKind] = {}


def register(kind: type[LayerKind]) -> None:
    if kind.kind in LAYERS:
        raise InternalError(f"layer kind '{kind.kind}' registered twice")
    LAYERS[kind.kind] = kind()


from . import basic, activations, shape_ops  # noqa: E402
from . import attention, positional, feed_forward, transformer, recurrent  # noqa: E402
from . import relative_bias, token_masks  # noqa: E402
from . import masking, pooling  # noqa: E402
from . import free_tensors, cast  # noqa: E402

for _module in (basic, activations, shape_ops, attention, positional, feed_forward, transformer, recurrent, relative_bias,
                token_masks, masking, pooling, free_tensors, cast):
    for _kind in _module.KINDS:
        register(_kind)

__all__ = ["LAYERS", "register", "LayerKind", "Param", "Port", "Call", "REQUIRED"]
