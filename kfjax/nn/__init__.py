"""Layers and networks shared by the methods of kfjax (Flax Linen, channel-last)."""

from kfjax.nn.blocks import ConvNormAct, DoubleConv, Norm, Upsample, max_pool, pixel_shuffle, upsample_nearest
from kfjax.nn.di2in import DI2IN
from kfjax.nn.unet import UNet

__all__ = ["ConvNormAct", "DI2IN", "DoubleConv", "Norm", "UNet", "Upsample", "max_pool", "pixel_shuffle",
           "upsample_nearest"]
