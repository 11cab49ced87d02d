"""droidspeak inside vLLM: a KV connector vLLM loads by module path, no fork or patch of vLLM.

    vllm serve MODEL_DIR --enable-lora --lora-modules NAME=DIR --kv-transfer-config \\
      '{"kv_connector": "DroidspeakConnector", "kv_connector_module_path": "droidspeak.integrations.vllm",
        "kv_role": "kv_both", "kv_load_failure_policy": "recompute"}'

:mod:`.connector` is the connector, :mod:`.adapters` writes an activated adapter as vLLM loads it,
:mod:`.paged` moves K/V in and out of vLLM's paged cache. Importing this package needs no vLLM; the
connector's class needs a vLLM release it was tested with (:data:`TESTED`), else it fails in one line.
"""

from __future__ import annotations

from typing import Any

TESTED = ("0.32.0",)


def check_vllm() -> str:
    """The installed vLLM's version, when the connector was tested with it; else one-line DroidspeakError."""
    from ...errors import DroidspeakError

    try:
        import vllm
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1  # noqa: F401
    except ImportError as e:
        raise DroidspeakError(f"the droidspeak connector needs vLLM {' or '.join(TESTED)} (make setup-vllm): {e}") from None
    version = str(getattr(vllm, "__version__", "?"))
    if version.split("+")[0] not in TESTED:
        raise DroidspeakError(f"the droidspeak connector was tested with vLLM {', '.join(TESTED)}, not {version}: "
                              "its connector API changes between releases")
    return version


def __getattr__(name: str) -> Any:
    if name == "DroidspeakConnector":
        check_vllm()
        from .connector import DroidspeakConnector

        return DroidspeakConnector
    raise AttributeError(name)
