"""Building blocks several methods share: the supervised single-group step, the two-player GAN update,
MAR scoring and the correction of a user's CT volume."""
