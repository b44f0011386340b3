"""Differentiable operators the losses are built on, each with its own custom VJP."""
