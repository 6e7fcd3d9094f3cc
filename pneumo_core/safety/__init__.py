"""Whether a film is one the model may read: model-free checks, the feature-space guard, film types."""
