"""Finite groups and their real irreducible representations, computed (not typed in).

Groups are named by a short spec: ``c<n>`` (cyclic, order n), ``d<n>`` (dihedral of the n-gon,
order 2n), ``s<n>`` (symmetric, n <= 5) and ``a<n>`` (alternating, 3 <= n <= 5). Element order
(mechgrok's own, the token ids of a group task):

* ``c<n>``: j = 0 .. n-1 (r^j);
* ``d<n>``: index j + n e for r^j s^e (r the rotation, s a reflection, s r s = r^-1);
* ``s<n>`` / ``a<n>``: permutations of 0 .. n-1 as tuples in lexicographic order (the identity
  first), a<n> keeping the even ones; products compose right to left, (a b)(i) = a(b(i)).

Irreps are real orthogonal matrices ``[order, dim, dim]`` (float64), each a homomorphism:

* C_n: the trivial irrep, the 2-dimensional rotations by 2 pi k j / n named ``freq k``
  (k = 1 .. (n-1)//2) and, for even n, the sign ``freq n/2`` - so C_p's irreps are exactly the
  frequencies of the Fourier probes, in the same order;
* D_n: trivial, ``sign`` (s -> -1), for even n ``rsign`` (r -> -1) and ``rsign*sign``, and the
  2-dimensional ``rot k`` (r -> rotation by 2 pi k / n, s -> diag(1, -1));
* S_n: one irrep per partition of n, in Young's orthogonal form on standard Young tableaux
  (adjacent transpositions act by the axial-distance formula), extended to the whole group along
  the Cayley graph; named by the partition, e.g. ``(4,1)`` (the standard representation);
* A_n: restrictions of the S_n irreps of partitions lambda > lambda' (lambda' the conjugate); a
  self-conjugate lambda's restriction is split along the symmetric commutant when it splits over
  the reals (A_5's ``(3,1,1)+`` / ``(3,1,1)-``), else kept as one real irrep of complex type
  (A_4's 2-dimensional ``(2,2)``).

An irrep is of *real type* when its complexification stays irreducible (then its d^2 matrix
coefficients are orthogonal functions on G) and of *complex type* otherwise (a 2-dimensional
rotation of C_n: its coefficients span only d^2 / 2 functions). :meth:`FiniteGroup.basis`
orthonormalises each irrep's coefficients, giving an orthonormal basis of functions on G blocked
by irrep: the group Fourier transform the irrep probes use.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass

import torch

__all__ = ["GROUP_SPEC", "FiniteGroup", "Irrep", "finite_group", "group_order", "partitions"]

GROUP_SPEC = re.compile(r"^([cdsa])([0-9]{1,7})$")
"""A group spec: kind letter and n (``s5``, ``d7``, ``c13``, ``a4``)."""

MAX_CYCLIC = 1 << 12
"""Largest n of ``c<n>`` / ``d<n>``: the irrep basis is an [order, order] float64 matrix."""


@dataclass(frozen=True)
class Irrep:
    """One real irreducible representation: ``matrices [order, dim, dim]`` float64 (orthogonal),
    ``real_type`` False when its complexification splits (a complex pair seen over the reals)."""

    name: str
    dim: int
    matrices: torch.Tensor
    real_type: bool = True

    @property
    def character(self) -> torch.Tensor:
        """Traces ``[order]``."""
        return self.matrices.diagonal(dim1=-2, dim2=-1).sum(-1)


@dataclass(frozen=True)
class FiniteGroup:
    """A finite group by its multiplication table: ``table[a, b]`` = index of ``a * b``."""

    spec: str
    name: str
    elements: tuple
    table: torch.Tensor

    @property
    def order(self) -> int:
        return len(self.elements)

    @property
    def identity(self) -> int:
        return int(torch.nonzero((self.table == torch.arange(self.order)[None]).all(1))[0, 0])

    @property
    def inverse(self) -> torch.Tensor:
        """``inverse[g]`` = index of g^-1."""
        return (self.table == self.identity).int().argmax(1)

    def irreps(self) -> list[Irrep]:
        """The real irreps (module docstring), trivial first."""
        return list(_irreps(self.spec))

    def basis(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Orthonormal basis of functions on G blocked by irrep: ``U [order, order]`` float64
        (column j a function of the element) and ``irrep_of_col [order]`` int64 (index into
        :meth:`irreps`). Columns of one irrep span its matrix coefficients (its isotypic part of
        the regular representation)."""
        U, cols = _basis(self.spec)
        return U.clone(), cols.clone()


def group_order(spec: str) -> int:
    """Order of the group named by ``spec`` without building it (``s5`` -> 120)."""
    kind, n = _parse(spec)
    return {"c": n, "d": 2 * n, "s": math.factorial(n), "a": math.factorial(n) // 2}[kind]


def _parse(spec: str) -> tuple[str, int]:
    m = GROUP_SPEC.match(str(spec).lower())
    if not m:
        raise ValueError(f"group {spec!r}: expected c<n>, d<n>, s<n> or a<n> (e.g. 's5', 'd7')")
    kind, n = m.group(1), int(m.group(2))
    lo, hi = {"c": (2, MAX_CYCLIC), "d": (3, MAX_CYCLIC // 2), "s": (2, 5), "a": (3, 5)}[kind]
    if not lo <= n <= hi:
        raise ValueError(f"group {spec!r}: n must be in [{lo}, {hi}] for {kind}<n>")
    return kind, n


@functools.lru_cache(maxsize=16)
def finite_group(spec: str) -> FiniteGroup:
    """The group named by ``spec`` (module docstring); ValueError for an unknown spec."""
    kind, n = _parse(spec)
    spec = f"{kind}{n}"
    if kind == "c":
        j = torch.arange(n)
        return FiniteGroup(spec, f"C{n}", tuple(range(n)), (j[:, None] + j[None]) % n)
    if kind == "d":
        elems = [(j, e) for e in (0, 1) for j in range(n)]
        index = {g: i for i, g in enumerate(elems)}
        # r^j s^e r^k s^f = r^(j + (-1)^e k) s^(e + f)
        table = torch.tensor(
            [[index[((j + (k if e == 0 else -k)) % n, (e + f) % 2)] for (k, f) in elems] for (j, e) in elems]
        )
        return FiniteGroup(spec, f"D{n}", tuple(elems), table)
    perms = list(itertools.permutations(range(n)))
    if kind == "a":
        perms = [q for q in perms if _parity(q) == 0]
    index = {q: i for i, q in enumerate(perms)}
    table = torch.tensor([[index[tuple(a[b[i]] for i in range(n))] for b in perms] for a in perms])
    return FiniteGroup(spec, f"{kind.upper()}{n}", tuple(perms), table)


def _parity(q: tuple[int, ...]) -> int:
    return sum(1 for i in range(len(q)) for j in range(i + 1, len(q)) if q[i] > q[j]) % 2


def partitions(n: int) -> list[tuple[int, ...]]:
    """Partitions of n, largest first in reverse lexicographic order: (n), (n-1, 1), ..."""
    out: list[tuple[int, ...]] = []

    def rec(left: int, cap: int, prefix: tuple[int, ...]) -> None:
        if left == 0:
            out.append(prefix)
            return
        for k in range(min(left, cap), 0, -1):
            rec(left - k, k, prefix + (k,))

    rec(n, n, ())
    return out


def _conjugate(lam: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sum(1 for part in lam if part > i) for i in range(lam[0]))


def _standard_tableaux(lam: tuple[int, ...]) -> list[dict[int, tuple[int, int]]]:
    """Standard Young tableaux of shape ``lam`` as {entry: (row, col)} (entries 0 .. n-1)."""
    n = sum(lam)
    out = []

    def rec(filled: list[int], pos: dict[int, tuple[int, int]], v: int) -> None:
        if v == n:
            out.append(dict(pos))
            return
        for r, length in enumerate(lam):
            c = filled[r]
            if c < length and (r == 0 or filled[r - 1] > c):
                filled[r] += 1
                pos[v] = (r, c)
                rec(filled, pos, v + 1)
                filled[r] -= 1
                del pos[v]

    rec([0] * len(lam), {}, 0)
    return out


def _young_generators(lam: tuple[int, ...]) -> list[torch.Tensor]:
    """Young's orthogonal form of the adjacent transpositions (i, i+1), i = 0 .. n-2."""
    tabs = _standard_tableaux(lam)
    key = {tuple(sorted(t.items())): k for k, t in enumerate(tabs)}
    d, n = len(tabs), sum(lam)
    gens = []
    for i in range(n - 1):
        M = torch.zeros(d, d, dtype=torch.float64)
        for k, t in enumerate(tabs):
            (r1, c1), (r2, c2) = t[i], t[i + 1]
            r = (c2 - r2) - (c1 - r1)  # axial distance: content(i+1) - content(i), never 0
            M[k, k] = 1.0 / r
            swapped = dict(t)
            swapped[i], swapped[i + 1] = t[i + 1], t[i]
            other = key.get(tuple(sorted(swapped.items())))
            if other is not None:  # the swap is standard (i, i+1 not in one row or column)
                M[other, k] = math.sqrt(1.0 - 1.0 / r**2)
        gens.append(M)
    return gens


def _extend(group: FiniteGroup, gens: dict[int, torch.Tensor]) -> torch.Tensor:
    """The homomorphism fixed by generator images ``{element: matrix}``, along the Cayley graph:
    rho(g s) = rho(g) rho(s) (breadth first from the identity)."""
    d = next(iter(gens.values())).shape[0]
    out = torch.full((group.order, d, d), float("nan"), dtype=torch.float64)
    e = group.identity
    out[e] = torch.eye(d, dtype=torch.float64)
    seen, frontier = {e}, [e]
    while frontier:
        nxt = []
        for g in frontier:
            for s, M in gens.items():
                h = int(group.table[g, s])
                if h not in seen:
                    out[h] = out[g] @ M
                    seen.add(h)
                    nxt.append(h)
        frontier = nxt
    if len(seen) != group.order:  # pragma: no cover - the generators below generate
        raise ValueError(f"{group.name}: generators reach {len(seen)} of {group.order} elements")
    return out


def _transposition_index(group: FiniteGroup, n: int, i: int) -> int:
    t = list(range(n))
    t[i], t[i + 1] = t[i + 1], t[i]
    return group.elements.index(tuple(t))


def _partition_name(lam: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, lam)) + ")"


@functools.lru_cache(maxsize=16)
def _irreps(spec: str) -> tuple[Irrep, ...]:
    group = finite_group(spec)
    kind, n = spec[0], int(spec[1:])
    if kind == "c":
        j = torch.arange(n, dtype=torch.float64)
        out = [Irrep("trivial", 1, torch.ones(n, 1, 1, dtype=torch.float64))]
        for k in range(1, n // 2 + 1):
            w = 2 * math.pi * k * j / n
            if 2 * k == n:
                out.append(Irrep(f"freq {k}", 1, torch.cos(w)[:, None, None]))
            else:
                c, s = torch.cos(w), torch.sin(w)
                out.append(
                    Irrep(
                        f"freq {k}",
                        2,
                        torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2),
                        real_type=False,
                    )
                )
        return tuple(out)
    if kind == "d":
        jj = torch.tensor([g[0] for g in group.elements], dtype=torch.float64)
        ee = torch.tensor([g[1] for g in group.elements], dtype=torch.float64)
        one = lambda v: v[:, None, None]
        out = [Irrep("trivial", 1, one(torch.ones_like(jj))), Irrep("sign", 1, one((-1.0) ** ee))]
        if n % 2 == 0:
            out += [Irrep("rsign", 1, one((-1.0) ** jj)), Irrep("rsign*sign", 1, one((-1.0) ** (jj + ee)))]
        for k in range(1, (n - 1) // 2 + 1):
            w = 2 * math.pi * k * jj / n
            c, s = torch.cos(w), torch.sin(w)
            rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
            flip = torch.diag_embed(torch.stack([torch.ones_like(ee), (-1.0) ** ee], -1))
            out.append(Irrep(f"rot {k}", 2, rot @ flip))
        return tuple(out)
    # S_n and A_n: Young's orthogonal form of each partition
    sym = finite_group(f"s{n}") if kind == "a" else group
    out = []
    for lam in partitions(n):
        conj = _conjugate(lam)
        if kind == "a" and conj > lam:
            continue  # lambda and lambda' restrict to the same A_n irrep: keep the larger one
        gens = {_transposition_index(sym, n, i): M for i, M in enumerate(_young_generators(lam))}
        mats = _extend(sym, gens)
        if kind == "s":
            out.append(Irrep(_partition_name(lam), mats.shape[1], mats))
            continue
        even = torch.tensor([sym.elements.index(g) for g in group.elements])
        mats = mats[even]
        if conj != lam:
            out.append(Irrep(_partition_name(lam), mats.shape[1], mats))
        else:
            out += _split_self_conjugate(_partition_name(lam), mats)
    return tuple(out)


def _split_self_conjugate(name: str, mats: torch.Tensor) -> list[Irrep]:
    """Split an A_n restriction of a self-conjugate S_n irrep over the reals, if it splits.

    A symmetric matrix commuting with every rho(g) (a group average of a fixed symmetric one) is
    a multiple of the identity on each real-type summand: two eigenvalues when the restriction is
    two inequivalent real irreps, one when it is irreducible over the reals (complex type).
    """
    d = mats.shape[1]
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(d, d, generator=gen, dtype=torch.float64)
    M = torch.einsum("gij,jk,glk->il", mats, X + X.T, mats)
    vals, vecs = torch.linalg.eigh(M)
    if float(vals[-1] - vals[0]) <= 1e-8 * float(vals.abs().max()):
        return [Irrep(name, d, mats, real_type=False)]
    h = d // 2
    parts = []
    for sign, Q in (("+", vecs[:, h:]), ("-", vecs[:, :h])):
        parts.append(Irrep(name + sign, h, torch.einsum("ia,gij,jb->gab", Q, mats, Q)))
    return parts


@functools.lru_cache(maxsize=16)
def _basis(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    cols, owner = [], []
    for r, irrep in enumerate(_irreps(spec)):
        coef = irrep.matrices.reshape(irrep.matrices.shape[0], -1)  # [order, d^2]: coefficient functions
        # orthonormal basis of their span: d^2 functions for real type, d^2 / 2 for complex type
        Q, s, _ = torch.linalg.svd(coef, full_matrices=False)
        rank = int((s > 1e-9 * s[0]).sum())
        cols.append(Q[:, :rank])
        owner += [r] * rank
    U = torch.cat(cols, 1)
    return U, torch.tensor(owner, dtype=torch.int64)
