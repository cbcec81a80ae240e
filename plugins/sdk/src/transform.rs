//! The preprocessing world: packed record batches in, tensors out.

pub use crate::preprocess::exports::gantry::preprocess::transform::Tensor;
pub use crate::scheduler::gantry::host::types::{ConfigEntry, PluginError};

/// A batch of records as it crossed the boundary: one byte buffer and the offsets between
/// records (checked once, so indexing cannot go out of bounds).
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    data: &'a [u8],
    offsets: &'a [u32],
}

impl<'a> Records<'a> {
    /// Checks that `offsets` starts at 0, never decreases and ends at `data.len()`.
    pub fn new(data: &'a [u8], offsets: &'a [u32]) -> Result<Self, PluginError> {
        let ok = offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.last().map(|&o| o as usize) == Some(data.len());
        if ok {
            Ok(Self { data, offsets })
        } else {
            Err(PluginError::InvalidInput(
                "malformed batch: offsets must run from 0 up to the data's length".into(),
            ))
        }
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `i`.
    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Every record, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.offsets
            .windows(2)
            .map(|w| &self.data[w[0] as usize..w[1] as usize])
    }

    /// All records' bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The packed form: the bytes and the offsets (for code shared with the host, which sees
    /// batches the same way).
    pub fn raw(&self) -> (&'a [u8], &'a [u32]) {
        (self.data, self.offsets)
    }
}

/// What a preprocessing plugin implements; export it with [`crate::export_transform!`].
///
/// State (configuration, learned statistics) lives in the plugin's statics: an instance is
/// one worker of the host's pool, configured once and then fed batches.
pub trait Transform {
    /// Called once on each new instance with the manifest's `[config]`.
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError>;
    /// First pass: partial sums over one batch (empty: no first pass).
    fn observe(_batch: Records<'_>) -> Result<Vec<f64>, PluginError> {
        Ok(Vec::new())
    }
    /// The first pass's totals, before the `process` pass.
    fn prepare(_totals: Vec<f64>) -> Result<(), PluginError> {
        Ok(())
    }
    /// One batch to a tensor whose first dimension is the record count.
    fn process(batch: Records<'_>) -> Result<Tensor, PluginError>;
}

/// Exports a [`Transform`] as the component's `gantry:preprocess/transform` implementation.
///
/// Only on wasm targets: native builds (unit tests) cannot link the WIT export names.
#[macro_export]
macro_rules! export_transform {
    ($transform:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::preprocess::exports::gantry::preprocess::transform as wit;
            use $crate::transform::{PluginError, Records, Tensor, Transform};
            struct GantryTransformExport;
            impl wit::Guest for GantryTransformExport {
                fn configure(
                    config: ::std::vec::Vec<$crate::transform::ConfigEntry>,
                ) -> ::std::result::Result<(), PluginError> {
                    <$transform as Transform>::configure(config)
                }
                fn observe(
                    batch: wit::Batch,
                ) -> ::std::result::Result<::std::vec::Vec<f64>, PluginError> {
                    <$transform as Transform>::observe(Records::new(&batch.data, &batch.offsets)?)
                }
                fn prepare(totals: ::std::vec::Vec<f64>) -> ::std::result::Result<(), PluginError> {
                    <$transform as Transform>::prepare(totals)
                }
                fn process(batch: wit::Batch) -> ::std::result::Result<Tensor, PluginError> {
                    <$transform as Transform>::process(Records::new(&batch.data, &batch.offsets)?)
                }
            }
            $crate::export_preprocess!(GantryTransformExport);
        };
    };
}
