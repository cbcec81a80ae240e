//! Per-store resource limits that remember when they said no.
//!
//! wasmtime's `StoreLimits` refuses growth but does not tell us afterwards; a guest whose
//! allocation fails then traps on `unreachable`, and we want to report "memory limit hit", not a
//! generic trap.

use wasmtime::ResourceLimiter;

use super::manifest::Limits;

/// A `ResourceLimiter` for one plugin store.
#[derive(Debug)]
pub struct PluginLimiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    /// Set when a growth request was refused.
    pub exceeded: bool,
}

impl PluginLimiter {
    /// Limits taken from a manifest.
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: (limits.memory_mib as usize) << 20,
            table_elements: limits.table_elements as usize,
            instances: limits.instances as usize,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for PluginLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.exceeded |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.table_elements;
        self.exceeded |= !ok;
        Ok(ok)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}
