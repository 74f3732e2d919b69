"""Layers and networks shared by the methods of kfjax (Flax Linen, channel-last)."""

from kfjax.nn.adn import ADNDecoder, ADNEncoder, ADNNet
from kfjax.nn.blocks import ConvNormAct, DoubleConv, Norm, Upsample, max_pool, pixel_shuffle, upsample_nearest
from kfjax.nn.di2in import DI2IN
from kfjax.nn.dudonet import DuDoNet
from kfjax.nn.gan import PatchDiscriminator, ResidualBlock, ResnetGenerator
from kfjax.nn.mask_pyramid import MaskPyramidUNet
from kfjax.nn.skip import SkipNet
from kfjax.nn.unet import UNet

__all__ = [
    "DI2IN",
    "ADNDecoder",
    "ADNEncoder",
    "ADNNet",
    "ConvNormAct",
    "DoubleConv",
    "DuDoNet",
    "MaskPyramidUNet",
    "Norm",
    "PatchDiscriminator",
    "ResidualBlock",
    "ResnetGenerator",
    "SkipNet",
    "UNet",
    "Upsample",
    "max_pool",
    "pixel_shuffle",
    "upsample_nearest",
]
