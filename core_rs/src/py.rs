//! The PyO3 layer: the only file that knows Python. Thin on purpose; the logic and
//! its tests live in the pure-Rust modules.

use crate::snapshot;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Arc;

/// An immutable, indexed config snapshot. Built once per config version.
#[pyclass(frozen, module = "model_router._core")]
struct Snapshot {
    inner: Arc<snapshot::Snapshot>,
}

#[pymethods]
impl Snapshot {
    /// Deserialize and index a snapshot document (JSON bytes), without the GIL.
    #[staticmethod]
    fn load(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let loaded = py.detach(|| snapshot::Snapshot::load(data));
        loaded
            .map(|s| Snapshot { inner: Arc::new(s) })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    #[getter]
    fn version(&self) -> u64 {
        self.inner.version
    }

    #[getter]
    fn model_count(&self) -> usize {
        self.inner.models.len()
    }

    #[getter]
    fn endpoint_count(&self) -> usize {
        self.inner.endpoint_count()
    }

    #[getter]
    fn rule_count(&self) -> usize {
        self.inner.rules.len()
    }

    fn model_ids(&self) -> Vec<String> {
        self.inner.models.iter().map(|m| m.id.clone()).collect()
    }

    fn has_model(&self, model_id: &str) -> bool {
        self.inner.model(model_id).is_some()
    }

    /// Ids of the enabled rules that may apply, in evaluation order.
    fn rules_for(&self, agent_type: &str, request_type: &str) -> Vec<String> {
        self.inner
            .rules_for(agent_type, request_type)
            .map(|r| r.id.clone())
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "Snapshot(version={}, models={}, endpoints={}, rules={})",
            self.inner.version,
            self.inner.models.len(),
            self.inner.endpoint_count(),
            self.inner.rules.len()
        )
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Snapshot>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
