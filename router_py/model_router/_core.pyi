"""Type stubs for the Rust extension (core_rs/src/py.rs)."""

__version__: str

class Snapshot:
    """An immutable, indexed config snapshot, built once per config version."""

    @staticmethod
    def load(data: bytes) -> Snapshot:
        """Deserialize and index a snapshot document (JSON). ValueError if invalid."""
    @property
    def version(self) -> int: ...
    @property
    def model_count(self) -> int: ...
    @property
    def endpoint_count(self) -> int: ...
    @property
    def rule_count(self) -> int: ...
    def model_ids(self) -> list[str]: ...
    def has_model(self, model_id: str) -> bool: ...
    def rules_for(self, agent_type: str, request_type: str) -> list[str]:
        """Ids of the enabled rules that may apply, in evaluation order."""
