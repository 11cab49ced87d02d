"""Experiments on one pair, outside the serving path: a request answered with a plan beside the
receiver's own prefill (:mod:`.reuse`), the layer-sensitivity study (:mod:`.study`), held-out
evaluation of a plan (:mod:`.evaluate`), and ``make demo`` (:mod:`.demo`)."""
