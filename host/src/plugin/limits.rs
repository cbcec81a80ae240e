//! Per-store resource limits that sum over the whole plugin and remember when they said no.
//!
//! A component may hold many core instances, each with memories and tables of its own; wasmtime
//! asks the limiter about each one separately (at instantiation, as growth from 0 to the initial
//! size, and at every later growth). A cap compared with one memory at a time would let a plugin
//! of N memories take N times its cap, so the limiter keeps running totals of every memory and
//! table of the store and compares those. wasmtime's `StoreLimits` also does not tell us
//! afterwards that it refused; a guest whose allocation fails then traps on `unreachable`, and
//! we want to report "memory limit hit", not a generic trap.

use wasmtime::ResourceLimiter;

use super::manifest::Limits;

/// A `ResourceLimiter` for one plugin store: totals over all its memories and tables.
#[derive(Debug)]
pub struct PluginLimiter {
    instances: usize,
    memories: usize,
    tables: usize,
    /// Bytes of all linear memories.
    memory: Total,
    /// Elements of all tables.
    table: Total,
    /// Set when a growth request was refused.
    pub exceeded: bool,
    table_refused: bool,
}

impl PluginLimiter {
    /// Limits taken from a manifest.
    pub fn new(limits: &Limits) -> Self {
        Self {
            instances: limits.instances as usize,
            memories: limits.memories as usize,
            tables: limits.tables as usize,
            memory: Total::capped_at((limits.memory_mib as usize) << 20),
            table: Total::capped_at(limits.table_elements as usize),
            exceeded: false,
            table_refused: false,
        }
    }

    /// Bytes of linear memory the store holds now, all memories together.
    pub fn memory_used(&self) -> usize {
        self.memory.used
    }

    /// True when the refusal was of table elements rather than memory.
    pub fn table_refused(&self) -> bool {
        self.table_refused
    }

    /// Table elements the store holds now, all tables together.
    pub fn table_used(&self) -> usize {
        self.table.used
    }
}

/// A running total over every memory (or every table) of a store, held within a cap.
#[derive(Debug)]
struct Total {
    used: usize,
    cap: usize,
    /// The last growth allowed, taken back if wasmtime then fails to carry it out.
    pending: usize,
}

impl Total {
    fn capped_at(cap: usize) -> Self {
        Self {
            used: 0,
            cap,
            pending: 0,
        }
    }

    /// Adds one memory's or table's growth from `current` to `desired` if the total stays
    /// within the cap.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let delta = desired.saturating_sub(current);
        match self.used.checked_add(delta) {
            Some(total) if total <= self.cap => {
                self.used = total;
                self.pending = delta;
                true
            }
            _ => false,
        }
    }

    /// Takes back the last growth allowed: wasmtime failed to carry it out (the memory's own
    /// maximum, say).
    fn grow_failed(&mut self) {
        self.used -= std::mem::take(&mut self.pending);
    }
}

impl ResourceLimiter for PluginLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.memory.grow(current, desired);
        self.exceeded |= !ok;
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.table.grow(current, desired);
        self.exceeded |= !ok;
        self.table_refused |= !ok;
        Ok(ok)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(memory_mib: u32, table_elements: u32) -> PluginLimiter {
        PluginLimiter::new(&Limits {
            memory_mib,
            table_elements,
            ..Limits::default()
        })
    }

    #[test]
    fn memory_cap_holds_across_several_memories() {
        let mut l = limiter(16, 100);
        // Four memories of 5 MiB each: the fourth would take the total past 16 MiB.
        for _ in 0..3 {
            assert!(l.memory_growing(0, 5 << 20, None).unwrap());
        }
        assert!(!l.memory_growing(0, 5 << 20, None).unwrap());
        assert!(l.exceeded);
        assert_eq!(l.memory_used(), 15 << 20);
        // Growth counts only the difference.
        assert!(l.memory_growing(5 << 20, 6 << 20, None).unwrap());
        assert!(!l.memory_growing(6 << 20, 7 << 20, None).unwrap());
    }

    #[test]
    fn a_growth_that_fails_after_approval_is_not_counted() {
        let mut l = limiter(16, 100);
        assert!(l.memory_growing(0, 10 << 20, None).unwrap());
        l.memory_grow_failed(wasmtime::format_err!("over the memory's maximum"))
            .unwrap();
        assert_eq!(l.memory_used(), 0);
        assert!(l.memory_growing(0, 16 << 20, None).unwrap());
    }

    #[test]
    fn table_cap_holds_across_several_tables() {
        let mut l = limiter(16, 100);
        assert!(l.table_growing(0, 60, None).unwrap());
        assert!(!l.table_growing(0, 60, None).unwrap());
        assert!(l.table_growing(0, 40, None).unwrap());
        assert_eq!(l.table_used(), 100);
        l.table_grow_failed(wasmtime::format_err!("over the table's maximum"))
            .unwrap();
        assert_eq!(l.table_used(), 60, "the failed growth is not counted");
    }
}
