"""Classification losses. Each returns one value per example; reduce it yourself.

Conventions shared by every loss: ``fn(logits, labels, *, hyperparameters..., axis=-1, where=None)``;
integer labels of the logits' shape without the class axis; keyword-only hyperparameters checked at
trace time; randomness only through an explicit ``key`` (or injected noise); 16-bit inputs computed in
float32 and returned in their own dtype.
"""

__all__ = []
