"""The OFA network: config and size presets, attention, layers, image backbone, encoder, decoder."""
from ofa.model.config import ARCHS, RELEASED_FLAGS, OFAModelConfig, config_for_arch
from ofa.model.ofa_model import OFAModel

__all__ = ["OFAModel", "OFAModelConfig", "ARCHS", "RELEASED_FLAGS", "config_for_arch"]
