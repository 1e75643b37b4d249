"""MAE pretraining: the loop, optimiser and schedule, FLOP counting and hardware metrics."""
