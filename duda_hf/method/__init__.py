"""The method (docs/method.md) as pure tensor code: its settings (`config`), the losses, ClassMix and augmentation
(`mixing`), MIC's masking (`masking`) and one training step: what its loss terms read (`step_tensors`), then the
terms and their sum (`step`). Nothing here knows the Trainer, the Hub or files."""
