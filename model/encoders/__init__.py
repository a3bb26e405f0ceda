"""Encoders: backbone tokens (B, T, C) -> per-vertex predictions, and their settings.

configs      the ``decoder`` and ``ridge`` sections of a run's config.json
queries      brain-region queries and the vertices each one reads out to
readouts     query tokens -> vertices
layers       decoder and encoder layers, position embeddings
windows      cross-attention through learned windows (``--attention windows``)
transformer  the DETR-style decoder (``transformer``, ``custom_transformer``)
baselines    ``linear``, ``spatial_feature`` and ``ridge``
interface    what an encoder is built from and what it declares it can do
registry     ``--encoder-arch`` names -> encoders, behind the token standardisation

This package exports what the rest of the suite uses; the parts are imported
from their modules.
"""
from .configs import DecoderConfig, RidgeConfig
from .interface import Capabilities, Encoder, TokenBackbone
from .queries import READOUT_RES, QuerySet, build_queries
from .registry import ARCHITECTURES, architecture, build_encoder

__all__ = ["ARCHITECTURES", "READOUT_RES", "Capabilities", "DecoderConfig", "Encoder", "QuerySet", "RidgeConfig",
           "TokenBackbone", "architecture", "build_encoder", "build_queries"]
