r"""Layer types, each with a hand-derived backward for ONE example.

=============  ==========================  ==================================
layer          params entry                factor kind
=============  ==========================  ==================================
``Dense``      ``fnn.Dense(w, b)``         :class:`kinds.Outer`
``Conv1d``     ``ConvParams(w, b)``        :class:`kinds.Conv`
``LayerNorm``  ``LayerNormParams(scale,    :class:`kinds.ScaleShift`
               shift)``
``Residual``   its block's entries         its block's kinds
``Activation`` ``()``                      none
``Flatten``    ``()``                      none
=============  ==========================  ==================================

Compose them with :class:`fnn.Sequential`. To add a layer type, subclass
:class:`Layer` (see :mod:`fnn.layers.base` and ``docs/layers.md``).
"""
from fnn.layers import kinds
from fnn.layers.base import Layer, chain_shapes, run_backward, run_forward
from fnn.layers.conv import Conv1d, ConvParams
from fnn.layers.dense import DenseLayer as Dense
from fnn.layers.norm import LayerNorm, LayerNormParams
from fnn.layers.residual import Residual
from fnn.layers.simple import Activation, Flatten

__all__ = ["Activation", "Conv1d", "ConvParams", "Dense", "Flatten", "Layer",
           "LayerNorm", "LayerNormParams", "Residual", "chain_shapes", "kinds",
           "run_backward", "run_forward"]
