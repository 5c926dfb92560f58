"""Symbolic proofs (sympy, exact) of the identities behind the rewrites, on small explicit matrices."""
import sympy as sp

C, K, V = 3, 2, 2


def sym_matrix(name, rows, cols):
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}{i}{j}", real=True))


def strict_lower(m):
    return sp.Matrix(m.rows, m.cols, lambda i, j: m[i, j] if i > j else 0)


def decay_mask(l, inclusive=True):
    return sp.Matrix(C, C, lambda i, j: sp.exp(l[i] - l[j]) if (i > j or inclusive and i == j) else 0)


l = [sp.Symbol(f"l{i}", real=True) for i in range(C)]
beta = sp.diag(*[sp.Symbol(f"b{i}", positive=True) for i in range(C)])
R, D = sym_matrix("r", C, K), sym_matrix("d", C, K)


def test_hoist_gates_identity():
    """(I + SL(diag β (R Dᵀ ⊙ Γ)))⁻¹ = G ⊙ (I + SL(diag β R Dᵀ))⁻¹."""
    gated = (sp.eye(C) + strict_lower(beta * (R * D.T).multiply_elementwise(decay_mask(l, False)))).inv()
    free = (sp.eye(C) + strict_lower(beta * R * D.T)).inv()
    assert sp.simplify(gated - decay_mask(l).multiply_elementwise(free)) == sp.zeros(C, C)


def test_eliminate_wu_identity():
    a, x, y, s = sym_matrix("a", C, C), sym_matrix("x", C, V), sym_matrix("y", C, K), sym_matrix("s", K, V)
    assert sp.expand(a * x - (a * y) * s - a * (x - y * s)) == sp.zeros(C, V)
    # β as a column scaling of A: A (β ⊙ X) − A(β ⊙ Y) S = (A diag β)(X − Y S)
    assert sp.expand(a * (beta * x) - a * (beta * y) * s - (a * beta) * (x - y * s)) == sp.zeros(C, V)


def test_exp2_identity():
    x = sp.Symbol("x", real=True)
    assert sp.simplify(sp.exp(x) - 2 ** (x * sp.log(sp.E, 2))) == 0


def test_split_state_xy_identity():
    """γ_L S + (D ⊙ r)ᵀ (G ⊙ A) Z = γ_L S + (Aᵀ D)ᵀ (r ⊙ X − γ_L diag β (R S)),
    Z = X − diag β (Γ ⊙ R) S, A the gate-free inverse, l a cumsum (l_last = l[C-1])."""
    x, s = sym_matrix("x", C, V), sym_matrix("s", K, V)
    a = (sp.eye(C) + strict_lower(beta * R * D.T)).inv()
    gamma = sp.diag(*[sp.exp(li) for li in l])
    r = sp.diag(*[sp.exp(l[-1] - li) for li in l])
    g_last = sp.exp(l[-1])
    z = x - beta * gamma * R * s
    fused = g_last * s + (r * D).T * decay_mask(l).multiply_elementwise(a) * z
    split = g_last * s + (a.T * D).T * (r * x - g_last * beta * R * s)
    assert sp.simplify(fused - split) == sp.zeros(K, V)


def test_merge_gate_gradients_identity():
    """Σ_u rowsum(dG_u ⊙ G) − colsum(dG_u ⊙ G) = rowsum(X) − colsum(X) with X = (Σ_u dG_u) ⊙ G."""
    g, d1, d2 = sym_matrix("g", C, C), sym_matrix("p", C, C), sym_matrix("q", C, C)

    def rows_minus_cols(m):
        return sp.Matrix([sum(m.row(i)) - sum(m.col(i)) for i in range(C)])

    separate = rows_minus_cols(d1.multiply_elementwise(g)) + rows_minus_cols(d2.multiply_elementwise(g))
    merged = rows_minus_cols((d1 + d2).multiply_elementwise(g))
    assert sp.expand(separate - merged) == sp.zeros(C, 1)


def test_reassociate_chain_identity():
    """R7: D_rᵀ (A_β W) = (A_βᵀ D_r)ᵀ W and P_g (A_β W) = (P_g A_β) W — the kernel's X̃ = (r ⊙ A_β)ᵀ K
    is A_βᵀ D_r with the row scaling r moved from K (C×K) onto A_β (C×C)."""
    a, w, p = sym_matrix("a", C, C), sym_matrix("w", C, V), sym_matrix("p", C, C)
    r = sp.diag(*[sp.Symbol(f"r{i}", positive=True) for i in range(C)])
    d_r = r * D
    assert sp.expand(d_r.T * (a * w) - (a.T * d_r).T * w) == sp.zeros(K, V)
    assert sp.expand((a.T * d_r) - (r * a).T * D) == sp.zeros(C, K)
    assert sp.expand(p * (a * w) - (p * a) * w) == sp.zeros(C, V)


def test_gate_after_product_identity():
    """R8: with A unit lower triangular, G the inclusive decay mask of l and r_i = exp(l_L − l_i),
    (G ⊙ A β)ᵀ diag(r) K = diag(β r) Aᵀ K and (P ⊙ G)(G ⊙ A) β = G ⊙ (tril(P) A) β."""
    a = (sp.eye(C) + strict_lower(sym_matrix("m", C, C))).inv()  # any unit lower-triangular inverse
    p = sym_matrix("p", C, C)
    g = decay_mask(l)
    r = sp.diag(*[sp.exp(l[-1] - li) for li in l])
    a_beta = g.multiply_elementwise(a) * beta
    tril = sp.Matrix(C, C, lambda i, j: p[i, j] if i >= j else 0)
    assert sp.simplify(a_beta.T * (r * D) - beta * r * a.T * D) == sp.zeros(C, K)
    assert sp.simplify(p.multiply_elementwise(g) * a_beta - g.multiply_elementwise(tril * a) * beta) == sp.zeros(C, C)
