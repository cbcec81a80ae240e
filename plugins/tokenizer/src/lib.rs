//! `tokenizer`: texts to fixed-length byte-level id sequences (see [`tokens`]), one pass.
//! Config: `length` (tokens per record, default 64), `lowercase` (default false).

pub mod tokens;

use std::cell::Cell;

use gantry_plugin_sdk::config::Config;
use gantry_plugin_sdk::transform::{ConfigEntry, PluginError, Records, Tensor, Transform};

thread_local! {
    static LENGTH: Cell<usize> = const { Cell::new(64) };
    static LOWERCASE: Cell<bool> = const { Cell::new(false) };
}

/// The plugin.
pub struct Tokenizer;

impl Transform for Tokenizer {
    fn configure(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        let config = Config::new(config);
        config.reject_unknown(&["length", "lowercase"])?;
        let length: usize = config.parse_or("length", 64)?;
        if !(1..=65_536).contains(&length) {
            return Err(PluginError::InvalidConfig(format!(
                "config key `length`: 1 to 65536, not {length}"
            )));
        }
        LENGTH.set(length);
        LOWERCASE.set(config.parse_or("lowercase", false)?);
        Ok(())
    }

    fn process(batch: Records<'_>) -> Result<Tensor, PluginError> {
        let (length, lowercase) = (LENGTH.get(), LOWERCASE.get());
        let mut out = Vec::with_capacity(batch.len() * length);
        for text in batch.iter() {
            tokens::tokenize(text, length, lowercase, &mut out);
        }
        Ok(Tensor {
            shape: vec![batch.len() as u32, length as u32],
            data: out,
        })
    }
}

gantry_plugin_sdk::export_transform!(Tokenizer);
