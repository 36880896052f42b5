"""Symbolic dimensions and the small arithmetic language of specs."""
from .dim import Dim, DimLike, as_dim, format_shape
from .expr import parse_expr, Expr

__all__ = ["Dim", "DimLike", "as_dim", "format_shape", "parse_expr", "Expr"]
