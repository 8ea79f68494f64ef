"""Models and masked training: the model zoo, training loops, validation-selected fine-tuning, devices."""
