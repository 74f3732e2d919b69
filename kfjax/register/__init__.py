"""2D/3D registration: align a CT volume to X-ray images.

- :mod:`kfjax.register.intensity`: intensity-based rigid registration (the "Opt." baseline) by gradient
  descent on the similarity (NCC, gradient correlation) between DRRs and the target X-rays.
- :mod:`kfjax.register.similarity`: the image similarities (NCC, gradient correlation).
- :mod:`kfjax.register.pose`: pose parameters <-> rigid transforms, volume/image resampling.
"""
