"""The intermediate representation: a directed graph (networkx's DiGraph model, graphc.ir.digraph) of primitive ops and typed values."""
from .graph import Graph, OpNode, ValueInfo, TensorType, DTYPES, verify
from .builder import Builder, Value, Init

__all__ = ["Graph", "OpNode", "ValueInfo", "TensorType", "DTYPES", "verify", "Builder", "Value", "Init"]
