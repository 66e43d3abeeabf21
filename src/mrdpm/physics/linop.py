"""Linear operators with ``forward``/``adjoint``, composition and a normal (gram) operator.

``A @ B`` composes, ``A.H`` is the adjoint, ``A + B`` and ``c * A`` combine, ``A @ x`` (x a tensor) applies.
The gram of a composition is ``B^H (A^H A) B``, so a cheap gram of an inner operator (the identity for a
unitary FFT, a pointwise product for a mask) is used automatically.
"""

from __future__ import annotations

import torch

__all__ = ["AdjointOperator", "CompositeOperator", "IdentityOperator", "LinearOperator", "ScaledOperator",
           "SumOperator"]


class LinearOperator:
    """Base class: subclasses implement :meth:`forward` and :meth:`adjoint` (and optionally :meth:`gram`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator, ``A x``."""
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint, ``A^H y``."""
        raise NotImplementedError

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normal operator, ``A^H A x``; override when a cheaper form exists."""
        return self.adjoint(self.forward(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator (same as :meth:`forward`)."""
        return self.forward(x)

    @property
    def H(self) -> LinearOperator:
        """The adjoint operator."""
        return AdjointOperator(self)

    def __matmul__(self, other):
        if isinstance(other, LinearOperator):
            return CompositeOperator(self, other)
        if isinstance(other, torch.Tensor):
            return self.forward(other)
        return NotImplemented

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __mul__(self, scalar: complex) -> LinearOperator:
        if not isinstance(scalar, int | float | complex):
            return NotImplemented
        return ScaledOperator(self, scalar)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return type(self).__name__


class IdentityOperator(LinearOperator):
    """``I x = x``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y

    def gram(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x


class AdjointOperator(LinearOperator):
    """``A^H``, whose adjoint is ``A`` again."""

    def __init__(self, op: LinearOperator):
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.op.forward(y)

    @property
    def H(self) -> LinearOperator:  # noqa: D102
        return self.op

    def __repr__(self) -> str:
        return f"{self.op!r}.H"


class CompositeOperator(LinearOperator):
    """``A @ B``: apply ``B`` first, then ``A``."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        self.outer, self.inner = outer, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.inner.adjoint(self.outer.adjoint(y))

    def gram(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.inner.adjoint(self.outer.gram(self.inner.forward(x)))

    def __repr__(self) -> str:
        return f"{self.outer!r} @ {self.inner!r}"


class SumOperator(LinearOperator):
    """``A + B`` (same input and output shapes)."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.a.forward(x) + self.b.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.a.adjoint(y) + self.b.adjoint(y)

    def __repr__(self) -> str:
        return f"({self.a!r} + {self.b!r})"


class ScaledOperator(LinearOperator):
    """``c A`` for a (complex) scalar ``c``."""

    def __init__(self, op: LinearOperator, scalar: complex):
        self.op, self.scalar = op, scalar

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.scalar * self.op.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.scalar.conjugate() * self.op.adjoint(y)

    def gram(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return abs(self.scalar) ** 2 * self.op.gram(x)

    def __repr__(self) -> str:
        return f"{self.scalar} * {self.op!r}"
