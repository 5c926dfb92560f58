"""Evaluate IR expressions on batched torch tensors.

Every leaf is looked up in an environment of tensors whose last two dimensions are the matrix
shape (scalars [..., 1, 1], K-vectors [..., K, 1], the state [..., K, V]); leading dimensions
broadcast, so one call evaluates a token for all heads, or all tokens of a chunk at once.
"""
from __future__ import annotations

import operator
from functools import reduce

import sympy as sp
import torch
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix

_SCALAR_FUNCS = {sp.exp: torch.exp, sp.log: torch.log, sp.sqrt: torch.sqrt, sp.tanh: torch.tanh}


def evaluate(expr, env: dict[str, torch.Tensor], identity_size: int | None = None):
    """The value of ``expr`` with leaves from ``env`` (keyed by symbol name).

    identity_size: K, needed only when ``expr`` contains the identity matrix I.
    """
    if isinstance(expr, sp.MatrixExpr):
        return _matrix(expr, env, identity_size)
    return _scalar(expr, env)


def _matrix(expr, env, n):
    if isinstance(expr, sp.MatrixSymbol):
        return env[expr.name]
    if isinstance(expr, sp.Identity):
        if n is None:
            raise ValueError("evaluating I needs identity_size")
        ref = next(t for t in env.values() if torch.is_tensor(t))
        return torch.eye(n, dtype=ref.dtype, device=ref.device)
    if isinstance(expr, sp.MatAdd):
        return reduce(operator.add, (evaluate(a, env, n) for a in expr.args))
    if isinstance(expr, sp.MatMul):
        scalars = [a for a in expr.args if not isinstance(a, sp.MatrixExpr)]
        mats = [_matrix(a, env, n) for a in expr.args if isinstance(a, sp.MatrixExpr)]
        out = reduce(torch.matmul, mats)
        return reduce(operator.mul, (_scalar(s, env) for s in scalars), out)
    if isinstance(expr, sp.Transpose):
        return _matrix(expr.arg, env, n).transpose(-1, -2)
    if isinstance(expr, sp.HadamardProduct):
        return reduce(operator.mul, (_matrix(a, env, n) for a in expr.args))
    if isinstance(expr, DiagMatrix):
        return torch.diag_embed(_matrix(expr.args[0], env, n)[..., 0])
    if isinstance(expr, ElementwiseApplyFunction):
        var, body = expr.function.variables[0], expr.function.expr
        return _scalar(body, {**env, var: _matrix(expr.expr, env, n)})
    raise TypeError(f"cannot evaluate matrix expression {sp.sstr(expr)} ({type(expr).__name__})")


def _scalar(expr, env):
    if isinstance(expr, sp.Dummy):  # the variable of an elementwise function, keyed by itself
        return env[expr]
    if isinstance(expr, sp.Symbol):
        return env[expr.name]
    if expr.is_Number:
        return float(expr)
    if isinstance(expr, sp.Add):
        return reduce(operator.add, (_scalar(a, env) for a in expr.args))
    if isinstance(expr, sp.Mul):
        return reduce(operator.mul, (_scalar(a, env) for a in expr.args))
    if isinstance(expr, sp.Pow):
        return _scalar(expr.base, env) ** _scalar(expr.exp, env)
    func = _SCALAR_FUNCS.get(expr.func)
    if func is not None:
        arg = _scalar(expr.args[0], env)
        return func(arg if torch.is_tensor(arg) else torch.tensor(arg, dtype=torch.float64))
    raise TypeError(f"cannot evaluate scalar expression {sp.sstr(expr)} ({type(expr).__name__})")
