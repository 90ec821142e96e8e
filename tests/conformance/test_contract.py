"""The KV contract on every backend in tests/backends."""

from kvsessions.testing import KVStoreContract, StoreFactory, run_state_machine


class TestContract(KVStoreContract):
    pass


def test_state_machine_matches_a_dict(store_factory: StoreFactory) -> None:
    run_state_machine(store_factory, max_examples=15, steps=25)
