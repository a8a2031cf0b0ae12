"""The method (docs/method.md) as pure tensor code: its settings (`config`), the losses, ClassMix and augmentation
(`mixing`) and one training step (`step`). Nothing here knows the Trainer, the Hub or files."""
