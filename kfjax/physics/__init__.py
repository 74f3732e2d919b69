"""Imaging physics in JAX: CT geometries, the Joseph projector with its matched adjoint, FBP and the Radon
inversion layer, metal-artifact simulation, SE(3), C-arm cameras and DRR rendering."""
