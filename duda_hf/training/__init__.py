"""Training with `transformers.Trainer`: `DudaTrainer`, its callbacks, atomic checkpoints, preemption, resume, the
Hub policy, and the Trainer internals it relies on (`trainer_internals`)."""
