"""The conformance suite, for this project's adapters and for third-party ones.

To run it against your own store, subclass the contract in a test module and give it a
``store_factory`` fixture::

    import pytest
    from kvsessions.testing import KVStoreContract, StoreFactory

    class TestMyStore(KVStoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path):
            return StoreFactory(lambda namespace: MyStore(tmp_path, namespace=namespace),
                                persistent=True)

It needs ``pytest``, ``pytest-asyncio`` (``asyncio_mode = "auto"``) and ``hypothesis``.
"""

from kvsessions.testing.contract import KVStoreContract, StoreFactory, same_json, utf8_sorted
from kvsessions.testing.statemachine import run_state_machine

__all__ = ["KVStoreContract", "StoreFactory", "run_state_machine", "same_json", "utf8_sorted"]
