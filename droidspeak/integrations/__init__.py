"""droidspeak inside other engines: :mod:`.vllm` (a KV connector loaded by vLLM by module path)."""
