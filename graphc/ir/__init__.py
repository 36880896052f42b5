"""The intermediate representation: a networkx graph of primitive ops and typed values."""
from .graph import Graph, OpNode, ValueInfo, TensorType, DTYPES, verify
from .builder import Builder, Value, Init

__all__ = ["Graph", "OpNode", "ValueInfo", "TensorType", "DTYPES", "verify", "Builder", "Value", "Init"]
