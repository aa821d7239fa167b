"""Test configuration: float64 for gradient checks, strict rank promotion.

x64 lets the hand-derived gradients be compared with ``jax.grad`` at ~1e-12;
``rank_promotion="raise"`` turns an accidental ``(n, 1)`` vs ``(n,)`` broadcast
(the classic bias bug) into an error.
"""
import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
