"""Pure maths of training: the train and eval steps, losses, metrics, optimizers, schedules, regularisation."""
