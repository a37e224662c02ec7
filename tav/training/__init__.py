"""Training plumbing shared by the stages: Trainer construction, run directories, Lightning modules."""
