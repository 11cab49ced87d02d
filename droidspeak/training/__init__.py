"""Training the shipped variants: the three adapter kinds (:mod:`.adapters`) and the recipes, training
and held-out evaluation of each variant (:mod:`.variants`)."""
