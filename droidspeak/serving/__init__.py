"""The OpenAI-compatible server: one engine loop that schedules, runs and postprocesses.

A request's route: :mod:`.api` (validate, lay out the prompt) -> :mod:`.engine` (the loop) ->
:mod:`.scheduler` (what runs next) -> :mod:`.runner` (the one sharing path for prefill, batched
decode) -> :mod:`.output` (text, stops, metrics) -> :mod:`.render` (response bodies). Around it:
:mod:`.host` (the models served), :mod:`.config` (the settings table), :mod:`.guard` and
:mod:`.traffic` (the online quality guard and the prompts it checked), :mod:`.metrics`
(Prometheus), :mod:`.app` (a node from its settings).
"""
