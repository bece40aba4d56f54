"""Gradient-inversion audits (GIFD on images, ReCIT on LoRA gradients): how much a shared
gradient gives away."""
