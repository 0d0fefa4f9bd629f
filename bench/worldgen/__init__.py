"""How a ConceptWorld is built (its recipe): config, data, training of the UNet, the world CLIP and the judges, gates."""
