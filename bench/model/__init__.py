"""torch/diffusers plumbing shared by methods, attacks and the harness: pipelines, sampling, training pieces."""
