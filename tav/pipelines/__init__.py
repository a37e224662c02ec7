"""End-to-end samplers built from the stage models: TA2V two-stage sampling and its results folder."""
