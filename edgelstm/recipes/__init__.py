"""Training recipes that produce the models the project ships (workstation side, needs Keras)."""
