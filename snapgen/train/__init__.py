"""``snapgen train``: base flow matching, multi-level KD, adversarial step distillation, the tiny decoder."""
