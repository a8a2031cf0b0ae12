"""Training with `transformers.Trainer`: `DudaTrainer` (`trainer`) and its streaming evaluation (`trainer_evaluation`),
its callbacks, atomic checkpoints, preemption, resume, the Hub policy, and the Trainer internals it relies on
(`trainer_internals`)."""
