"""The prefill core: plans, prompts, captures, the one cache assembler, full and partial prefill, decoding.

Everything here works on one model and one context in memory; sharing through a store is
:mod:`droidspeak.sharing`'s. The modules, bottom up: :mod:`.plan` (which layers a receiver
recomputes), :mod:`.prompt` (the one layout rule), :mod:`.result` (what a prefill hands back),
:mod:`.capture` (a sender's per-layer K/V and E), :mod:`.assemble` (a receiver's context cache from
a layer source and a plan), :mod:`.prefill` (full and partial prefill), :mod:`.decode` (greedy
decoding on a prepared cache).
"""
