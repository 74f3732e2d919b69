"""pix2pix (Isola et al., CVPR 2017): paired image-to-image translation, one model per direction.

Here: MR contrast synthesis `data.source -> data.target` (default T1w -> T2w) on the simulated paired slices
of `kfjax.data.synthesis` (spin-echo simulation on the real MNI152 template; held-out slabs of the same
subject are the test set). Generator: U-Net with skip connections and a tanh output (`model.channels`, one
entry per level); discriminator: conditional PatchGAN on concat(input, output) (`model.d_layers`: 2 = 34x34
patches by default, the paper's 3 = 70x70). Generator loss: GAN + `loss.l1_weight` (100) x L1; vanilla (BCE)
GAN loss as in the reference code, or `loss.gan=lsgan`; Adam beta1 0.5 (lr 1e-3 at the CPU-scale defaults,
the paper's 2e-4 at paper scale). Generator and discriminator move in one jitted step
(`kfjax.methods.common.paired_gan`, shared with the self-inverse network). No flips or crops: the simulated
contrast depends on location, so left and right differ. Metrics: L1, PSNR, SSIM on [0, 1] in the brain mask.

    kfjax train pix2pix                                                       # T1w -> T2w, 2 mm slices
    kfjax train pix2pix --set data.source=t2w data.target=t1w                 # the other direction
    kfjax train pix2pix --set model.channels=64,128,256,512,512 model.d_features=64 model.d_layers=3 \
        optim.lr=2e-4 train.steps=20000                                       # paper scale (a GPU)
    kfjax infer pix2pix --workdir RUN --input t1.nii.gz --out t2.nii.gz --set infer.direction=t1w_to_t2w

`infer.direction` must be the direction the model was trained for (or empty).
"""

from __future__ import annotations

import dataclasses

from kfjax.methods.common.paired_gan import PairedGANConfig, PairedGANMethod, check_direction, direction_name
from kfjax.methods.registry import register
from kfjax.train.method import Inference
from kfjax.train.state import TrainState

__all__ = ["Pix2PixConfig", "Pix2PixMethod"]


@dataclasses.dataclass(frozen=True)
class Pix2PixConfig(PairedGANConfig):
    """pix2pix's settings: those of every paired GAN (`kfjax.methods.common.paired_gan.PairedGANConfig`)."""


@register("pix2pix")
class Pix2PixMethod(PairedGANMethod):
    Config = Pix2PixConfig
    description = "paired MR contrast synthesis, one direction per model (U-Net, conditional PatchGAN, L1 x 100)"
    paper = "Isola et al., CVPR 2017"
    inference = Inference(inputs=("volume",), help="synthesize the target contrast of an MR volume (trained direction)")

    def __init__(self, config: Pix2PixConfig):
        super().__init__(config)
        d = config.data
        self.direction = check_direction(config.infer.direction, (direction_name(d.source, d.target),),
                                         "the direction this pix2pix model was trained for")

    def infer(self, state: TrainState, inputs, progress: bool = True):
        """The `data.target` contrast of a `data.source` volume, slice by slice (`paired_gan.infer_volume`)."""
        return self.synthesize(state, inputs["volume"], progress)
